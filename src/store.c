/*-------------------------------------------------------------------------
 *
 * store.c
 *	  Per-backend knowledge of the installed extension: the schema it lives
 *	  in, its relations and their owner, the plans prepared against them,
 *	  and the offset that keeps transaction ids growing across clusters.
 *
 * The extension is installed in whatever schema CREATE EXTENSION chose.  An
 * SQL-callable function finds it from its own pg_proc entry; the worker finds
 * it from pg_extension.  The result is cached for the life of the backend and
 * dropped by a relcache callback when one of the relations changes (DROP
 * EXTENSION then CREATE EXTENSION gives new OIDs; the plans are then
 * prepared again).
 *
 * Transaction ids across clusters (DESIGN.md, decision 1): events carry the
 * id of the transaction that appended them, and commit-order readers compare
 * it with the oldest running transaction.  A dump restored into another
 * cluster brings ids from the old cluster, possibly far above the new
 * cluster's counter, so events appended after the restore would sort before
 * the restored ones and readers resuming from a checkpoint would skip them.
 * es_store keeps the identity of the cluster and an offset added to every
 * transaction id the extension stores or compares.  When the identity differs
 * (the store was restored elsewhere), the first append re-bases the store:
 * the offset becomes max(stored tx_id) + 1, computed the same way by every
 * backend until the re-base commits, so no reader and no writer ever
 * disagree.  The row is written in the same (sub)transaction as the events
 * that need it.
 *
 * Locking: no locks of its own.  Recording the cluster takes a row lock on
 * the single es_store row (or its unique key); concurrent writers wait for
 * each other and find the row already recorded.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "ultracore_es.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/transam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/xid8.h"

static EsStore store;
static bool store_valid = false;
static bool store_callback_registered = false;

/*
 * Offset state.  SETTLED: es_store names this cluster and the row is
 * committed, so the offset can no longer change.  Otherwise it is read again
 * on every call (only right after a restore, or before first use).
 */
static bool offset_settled = false;
static uint64 offset_value = 0;

static void
store_relcache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid ||
		relid == store.events_relid ||
		relid == store.aggregates_relid ||
		relid == store.store_relid)
		store_valid = false;
	if (relid == InvalidOid || relid == store.event_types_relid)
		es_event_type_cache_reset();
}

static Oid
store_relation(const char *relname, Oid nspid)
{
	Oid			relid = get_relname_relid(relname, nspid);

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation \"%s\" of ultracore_es does not exist in schema \"%s\"",
						relname, get_namespace_name(nspid)),
				 errhint("The extension is damaged or was not created: run CREATE EXTENSION ultracore_es.")));
	return relid;
}

/*
 * Resolve the relations of the extension installed in schema nspid.  Plans
 * prepared earlier stay valid when nothing moved; otherwise the generation is
 * bumped so that es_plan prepares them again.
 */
static void
store_resolve(Oid nspid)
{
	EsStore		next;
	HeapTuple	tup;

	if (!store_callback_registered)
	{
		CacheRegisterRelcacheCallback(store_relcache_callback, (Datum) 0);
		store_callback_registered = true;
	}

	do
	{
		store_valid = true;		/* the callback clears it if it fires now */
		memset(&next, 0, sizeof(next));
		next.nspid = nspid;
		next.events_relid = store_relation("es_events", nspid);
		next.events_version_idx = store_relation("es_events_version_key", nspid);
		next.position_seq = store_relation("es_events_position_seq", nspid);
		next.aggregates_relid = store_relation("es_aggregates", nspid);
		next.event_types_relid = store_relation("es_event_types", nspid);
		next.store_relid = store_relation("es_store", nspid);
		tup = SearchSysCache1(RELOID, ObjectIdGetDatum(next.events_relid));
		if (!HeapTupleIsValid(tup))
			elog(ERROR, "cache lookup failed for relation %u", next.events_relid);
		next.owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
		ReleaseSysCache(tup);
	} while (!store_valid);

	if (next.nspid != store.nspid ||
		next.events_relid != store.events_relid ||
		next.events_version_idx != store.events_version_idx ||
		next.position_seq != store.position_seq ||
		next.aggregates_relid != store.aggregates_relid ||
		next.event_types_relid != store.event_types_relid ||
		next.store_relid != store.store_relid ||
		next.owner != store.owner)
	{
		char	   *nspname = get_namespace_name(nspid);

		next.nspname = MemoryContextStrdup(TopMemoryContext, quote_identifier(nspname));
		next.generation = store.generation + 1;
		if (store.nspname)
			pfree(store.nspname);
		store = next;
		offset_settled = false;
		es_event_type_cache_reset();
	}
}

/*
 * es_store_for_function: the store of the extension that owns the called
 * function.  Costs one syscache lookup when the cache is warm.
 */
EsStore *
es_store_for_function(FunctionCallInfo fcinfo)
{
	Oid			nspid = get_func_namespace(fcinfo->flinfo->fn_oid);

	if (!store_valid || nspid != store.nspid)
		store_resolve(nspid);
	return &store;
}

/*
 * es_store_current: the store of the extension installed in the current
 * database, for code that runs outside an SQL function (the worker).  Returns
 * NULL when the extension is not installed.  Needs a transaction.
 */
EsStore *
es_store_current(void)
{
	Oid			extoid = get_extension_oid("ultracore_es", true);
	Oid			nspid = InvalidOid;
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;

	if (!OidIsValid(extoid))
		return NULL;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(extoid));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
		nspid = ((Form_pg_extension) GETSTRUCT(tup))->extnamespace;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);

	if (!OidIsValid(nspid))
		return NULL;
	if (!store_valid || nspid != store.nspid)
		store_resolve(nspid);
	return &store;
}

/*
 * es_call_begin: resolve the store, switch to the owner of its tables (with
 * a restricted security context, as for a SECURITY DEFINER function) and
 * connect to SPI.  es_call_end undoes both; on error, transaction abort
 * restores the role and closes SPI.
 *
 * Why not SECURITY DEFINER: the append path records the calling role, which a
 * SECURITY DEFINER function can no longer see, and the search_path pinning
 * such a function needs costs a GUC save/restore on every call of the hot
 * path.  The queries run here are immune to search_path instead (see EsPlan).
 */
void
es_call_begin(FunctionCallInfo fcinfo, EsCall *call)
{
	EsStore    *s = es_store_for_function(fcinfo);

	call->store = s;
	GetUserIdAndSecContext(&call->caller, &call->sec_context);
	SetUserIdAndSecContext(s->owner,
						   call->sec_context |
						   SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

void
es_call_end(EsCall *call)
{
	if (SPI_finish() != SPI_OK_FINISH)
		elog(ERROR, "SPI_finish failed");
	SetUserIdAndSecContext(call->caller, call->sec_context);
}

/*
 * es_plan: the saved plan of p for the current store, prepared on first use
 * (needs an SPI connection).  The plan lives until the store moves.
 */
SPIPlanPtr
es_plan(EsPlan *p)
{
	StringInfoData sql;
	const char *from;
	const char *hit;
	SPIPlanPtr	plan;

	if (p->plan != NULL && p->generation == store.generation)
		return p->plan;
	if (p->plan != NULL)
	{
		SPI_freeplan(p->plan);
		p->plan = NULL;
	}

	initStringInfo(&sql);
	for (from = p->sql; (hit = strstr(from, "@extschema@")) != NULL;
		 from = hit + strlen("@extschema@"))
	{
		appendBinaryStringInfo(&sql, from, hit - from);
		appendStringInfoString(&sql, store.nspname);
	}
	appendStringInfoString(&sql, from);

	plan = SPI_prepare(sql.data, p->nargs, p->argtypes);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s",
			 sql.data, SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "SPI_keepplan failed");
	pfree(sql.data);
	p->plan = plan;
	p->generation = store.generation;
	return plan;
}

static EsPlan read_store_plan = {
	"SELECT system_identifier, xid_offset, xmin FROM @extschema@.es_store",
	0, {InvalidOid}
};

static EsPlan max_tx_plan = {
	"SELECT pg_catalog.max(tx_id) FROM @extschema@.es_events",
	0, {InvalidOid}
};

static EsPlan record_store_plan = {
	"INSERT INTO @extschema@.es_store AS s (singleton, system_identifier, xid_offset, rebased_at)"
	" VALUES (true, $1, $2, $3)"
	" ON CONFLICT (singleton) DO UPDATE"
	"    SET system_identifier = excluded.system_identifier, xid_offset = excluded.xid_offset,"
	"        rebased_at = excluded.rebased_at"
	"  WHERE s.system_identifier OPERATOR(pg_catalog.<>) excluded.system_identifier",
	3, {INT8OID, INT8OID, TIMESTAMPTZOID}
};

/*
 * es_xid_offset: the offset added to transaction ids of this store.
 *
 * es_store is empty until the first append records the cluster, and is
 * dumped by pg_dump, so after a restore it names the old cluster.  While it
 * does not name this one, the offset is max(stored tx_id) + 1 (or the
 * recorded offset, if larger), which every backend computes alike; with
 * for_write it is recorded, in the current transaction.  Needs an SPI
 * connection.
 */
uint64
es_xid_offset(bool for_write)
{
	uint64		sysid = GetSystemIdentifier();
	uint64		offset = 0;
	bool		have_row;
	bool		isnull;
	Datum		d;

	if (offset_settled)
		return offset_value;

	if (SPI_execute_plan(es_plan(&read_store_plan), NULL, NULL, false, 2) != SPI_OK_SELECT ||
		SPI_processed > 1)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("es_store of ultracore_es holds more than one row")));
	have_row = (SPI_processed == 1);
	if (have_row)
	{
		HeapTuple	row = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		offset = (uint64) DatumGetInt64(SPI_getbinval(row, desc, 2, &isnull));
		if ((uint64) DatumGetInt64(SPI_getbinval(row, desc, 1, &isnull)) == sysid)
		{
			/* Our own uncommitted record could still roll back: keep checking. */
			offset_value = offset;
			offset_settled = !TransactionIdIsCurrentTransactionId(
				DatumGetTransactionId(SPI_getbinval(row, desc, 3, &isnull)));
			return offset;
		}
	}

	/* First use, or restored from another cluster. */
	if (SPI_execute_plan(es_plan(&max_tx_plan), NULL, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the highest transaction id of the event store");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		offset = Max(offset, U64FromFullTransactionId(DatumGetFullTransactionId(d)) + 1);

	if (for_write)
	{
		Datum		args[3];
		char		nulls[3] = {' ', ' ', have_row ? ' ' : 'n'};

		args[0] = Int64GetDatum((int64) sysid);
		args[1] = Int64GetDatum((int64) offset);
		args[2] = TimestampTzGetDatum(GetCurrentTimestamp());
		if (SPI_execute_plan(es_plan(&record_store_plan), args, nulls, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not record the cluster of the event store");
		if (SPI_processed > 0 && have_row)
			ereport(LOG,
					(errmsg("ultracore_es: event store restored from another cluster, transaction ids now offset by " UINT64_FORMAT,
							offset)));
	}
	return offset;
}

/*
 * Widen a 32-bit xid seen in a current snapshot to its 64-bit form, as
 * xid8funcs.c does: it is at most 2^31 behind the next transaction id.
 */
static FullTransactionId
widen_xid(TransactionId xid)
{
	FullTransactionId next = ReadNextFullTransactionId();
	uint32		epoch = EpochFromFullTransactionId(next);

	if (!TransactionIdIsNormal(xid))
		return FullTransactionIdFromEpochAndXid(0, xid);
	if (xid > XidFromFullTransactionId(next))
		epoch--;
	return FullTransactionIdFromEpochAndXid(epoch, xid);
}

/*
 * es_commit_horizon_of: the commit-order horizon seen by a snapshot, in the
 * store's id space.  Every event with tx_id below it belongs to a finished
 * transaction, so it is either visible in the snapshot or will never exist;
 * no event below it can appear later.  Needs an SPI connection.
 */
FullTransactionId
es_commit_horizon_of(Snapshot snapshot)
{
	FullTransactionId xmin = widen_xid(snapshot->xmin);

	return FullTransactionIdFromU64(U64FromFullTransactionId(xmin) + es_xid_offset(false));
}
