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
 * EXTENSION then CREATE EXTENSION gives new OIDs, ALTER SCHEMA ... RENAME
 * another name; the plans are then prepared again).
 *
 * Transaction ids across clusters (DESIGN.md, decision 1): events carry the
 * id of the transaction that appended them, and commit-order readers compare
 * it with the oldest running transaction.  A dump restored into another
 * cluster brings ids from the old cluster, possibly far above the new
 * cluster's counter, so events appended after the restore would sort before
 * the restored ones and readers resuming from a checkpoint would skip them.
 *
 * es_clusters records each cluster the store has lived in, with the offset
 * added to every transaction id the extension stores or compares there.  The
 * first append in a cluster records it: with offset 0 in a new store, with
 * max(stored tx_id) + 1 when the store came from another cluster (the rows
 * pg_dump carried along name the old clusters).  Until that row commits,
 * every backend derives the same offset from the same committed data, so no
 * reader and no writer ever disagree; the row is written in the same
 * (sub)transaction as the events that need it.  The table has no unique key
 * on purpose: concurrent first appenders each insert the same row instead of
 * waiting for one another.
 *
 * Locking: none of its own.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "core/store.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/transam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/xid8.h"

#include "core/event.h"

static EsStore store;
static bool store_valid = false;
static bool store_callback_registered = false;

/*
 * Offset state.  Settled: a committed row of es_clusters names this cluster,
 * so the offset can no longer change.  Until then it is worked out again on
 * every call (only before the first append in a cluster).
 */
static bool offset_settled = false;
static uint64 offset_value = 0;

/* Depth of reducer and upcaster calls under way (es_call_user_function). */
static int	user_code_depth = 0;

/* The caches built from the store's tables (es_store_on_change). */
#define MAX_CHANGE_CALLBACKS 8

static EsStoreChangeCallback change_callbacks[MAX_CHANGE_CALLBACKS];
static int	nchange_callbacks = 0;

/*
 * es_store_on_change: from _PG_init, a module's callback for changes of the
 * store's relations (see store.h).
 */
void
es_store_on_change(EsStoreChangeCallback callback)
{
	if (nchange_callbacks == MAX_CHANGE_CALLBACKS)
		elog(ERROR, "too many ultracore_es cache callbacks");
	change_callbacks[nchange_callbacks++] = callback;
}

static void
store_changed(Oid relid)
{
	int			i;

	for (i = 0; i < nchange_callbacks; i++)
		change_callbacks[i] (&store, relid);
}

/*
 * Relcache invalidations of the extension's relations: the store is resolved
 * again when one of its relations may have moved, the offset worked out
 * again when es_clusters changed; the modules' caches are emptied when their
 * source tables change (the registering functions and the catalog trigger
 * send these invalidations).
 */
static void
store_relcache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid ||
		relid == store.events_relid ||
		relid == store.aggregates_relid ||
		relid == store.clusters_relid)
		store_valid = false;
	if (relid == InvalidOid || relid == store.clusters_relid)
		offset_settled = false;
	store_changed(relid);
}

/* A schema was renamed (or dropped): the plans name the extension's schema. */
static void
store_namespace_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	store_valid = false;
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
	static const char *const event_columns[EV_NATTS] = {
		"event_id", "event_type", "aggregate_type", "aggregate_id", "version", "position",
		"tx_id", "occurred_at", "recorded_at", "causation_id", "correlation_id", "data",
		"metadata", "schema_version", "appended_by", "hash"
	};
	static const Oid event_column_types[EV_NATTS] = {
		TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT8OID, INT8OID,
		XID8OID, TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTOID, TEXTOID, JSONBOID,
		JSONBOID, INT4OID, TEXTOID, BYTEAOID
	};
	EsStore		next;
	HeapTuple	tup;
	const char *nspname;
	int			i;

	if (!store_callback_registered)
	{
		CacheRegisterRelcacheCallback(store_relcache_callback, (Datum) 0);
		CacheRegisterSyscacheCallback(NAMESPACEOID, store_namespace_callback, (Datum) 0);
		store_callback_registered = true;
	}

	/* Valid only once everything resolved: an error leaves it invalid. */
	store_valid = false;
	memset(&next, 0, sizeof(next));
	next.nspid = nspid;
	next.events_relid = store_relation("es_events", nspid);
	next.position_seq = store_relation("es_events_position_seq", nspid);
	next.aggregates_relid = store_relation("es_aggregates", nspid);
	next.event_types_relid = store_relation("es_event_types", nspid);
	next.clusters_relid = store_relation("es_clusters", nspid);
	next.reducers_relid = store_relation("es_reducers", nspid);
	next.upcasters_relid = store_relation("es_upcasters", nspid);
	next.policies_relid = store_relation("es_snapshot_policies", nspid);
	next.snapshots_relid = store_relation("es_snapshots", nspid);
	next.projections_relid = store_relation("es_projections", nspid);
	/* 1.1's, absent from a 1.0 catalog until the update */
	next.personal_data_relid = get_relname_relid("es_personal_data", nspid);
	next.subject_keys_relid = get_relname_relid("es_subject_keys", nspid);
	next.commit_log_relid = get_relname_relid("es_commit_log", nspid);
	next.commit_log_idx = get_relname_relid("es_commit_log_pkey", nspid);
	next.event_ids_relid = get_relname_relid("es_event_ids", nspid);
	next.event_ids_idx = get_relname_relid("es_event_ids_pkey", nspid);
	if (OidIsValid(next.event_ids_relid))
		next.events_1_0_rowtype = get_rel_type_id(get_relname_relid("es_events_1_0", nspid));
	next.events_rowtype = get_rel_type_id(next.events_relid);
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(next.events_relid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", next.events_relid);
	next.owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);

	/*
	 * The code reads and writes es_events rows by column number.  The last,
	 * hash, came with 1.1: the library serves a 1.0 catalog without it until
	 * the update.
	 */
	for (i = 0; i < EV_NATTS; i++)
	{
		char	   *attname = get_attname(next.events_relid, i + 1, true);

		if (i == EV_HASH && attname == NULL)
			break;
		if (i == EV_HASH)
			next.hashed = true;
		if (attname == NULL || strcmp(attname, event_columns[i]) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("column %d of es_events is \"%s\", expected \"%s\"",
							i + 1, attname ? attname : "(dropped)", event_columns[i]),
					 errhint("The table was altered outside the extension's scripts; restore its definition.")));
		/* Its values are read and written as of that type: another would crash the server. */
		if (get_atttype(next.events_relid, i + 1) != event_column_types[i])
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("column \"%s\" of es_events is of type %s, expected %s", attname,
							format_type_be(get_atttype(next.events_relid, i + 1)),
							format_type_be(event_column_types[i])),
					 errhint("The table was altered outside the extension's scripts; restore its definition.")));
	}
	/* Nor more: rows are read into arrays of its columns (a column dropped keeps its place). */
	if (SearchSysCacheExists2(ATTNUM, ObjectIdGetDatum(next.events_relid), Int16GetDatum(EV_NATTS + 1)))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("es_events has more than its %d columns", EV_NATTS),
				 errhint("The table was altered outside the extension's scripts; restore its definition.")));

	nspname = quote_identifier(get_namespace_name(nspid));
	if (next.nspid != store.nspid ||
		store.nspname == NULL || strcmp(nspname, store.nspname) != 0 ||
		next.events_relid != store.events_relid ||
		next.event_ids_relid != store.event_ids_relid ||
		next.event_ids_idx != store.event_ids_idx ||
		next.events_1_0_rowtype != store.events_1_0_rowtype ||
		next.position_seq != store.position_seq ||
		next.aggregates_relid != store.aggregates_relid ||
		next.event_types_relid != store.event_types_relid ||
		next.clusters_relid != store.clusters_relid ||
		next.reducers_relid != store.reducers_relid ||
		next.upcasters_relid != store.upcasters_relid ||
		next.policies_relid != store.policies_relid ||
		next.snapshots_relid != store.snapshots_relid ||
		next.projections_relid != store.projections_relid ||
		next.hashed != store.hashed ||
		next.personal_data_relid != store.personal_data_relid ||
		next.subject_keys_relid != store.subject_keys_relid ||
		next.commit_log_relid != store.commit_log_relid ||
		next.commit_log_idx != store.commit_log_idx ||
		next.owner != store.owner)
	{
		next.nspname = MemoryContextStrdup(TopMemoryContext, nspname);
		next.generation = store.generation + 1;
		if (store.nspname)
			pfree(store.nspname);
		store = next;
		offset_settled = false;
		store_changed(InvalidOid);
	}
	store_valid = true;
}

static EsPlan last_position_plan = {
	"SELECT s.last_value, s.is_called, q.seqcache"
	" FROM @extschema@.es_events_position_seq s, pg_catalog.pg_sequence q"
	" WHERE q.seqrelid OPERATOR(pg_catalog.=) '@extschema@.es_events_position_seq'::pg_catalog.regclass",
	0, {InvalidOid}
};

/*
 * es_last_position: the last position taken, or 0.  With settled, refused
 * when the sequence caches positions: a backend could still use a smaller
 * position it holds, and no range would ever be settled.  Needs SPI.
 */
int64
es_last_position(bool settled)
{
	bool		isnull;
	int64		last;

	if (SPI_execute_plan(es_plan(&last_position_plan), NULL, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not read es_events_position_seq");
	last = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)))
		last--;
	if (settled && DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull)) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("es_events_position_seq caches positions in the backends"),
				 errdetail("A backend may still append at a position below one taken since: no range is settled."),
				 errhint("Restore its definition: ALTER SEQUENCE es_events_position_seq CACHE 1.")));
	return Max(last, 0);
}

/*
 * es_position_bound: a position at or above every one taken so far (the
 * sequence's last value: with a cache, the end of the last block a backend
 * took), or 0 when none was, or when the caller may not read the sequence
 * (the calls run as the owner: es_call_begin).  Read directly, not through
 * a query as es_last_position does: every append asks for it.
 */
int64
es_position_bound(EsStore *s)
{
	LOCAL_FCINFO(fcinfo, 1);
	Datum		last;

	if (pg_class_aclcheck(s->position_seq, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
		return 0;
	InitFunctionCallInfoData(*fcinfo, NULL, 1, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = ObjectIdGetDatum(s->position_seq);
	fcinfo->args[0].isnull = false;
	last = pg_sequence_last_value(fcinfo);
	return fcinfo->isnull ? 0 : Max(DatumGetInt64(last), 0);
}

/*
 * es_store_resolved: the store that the running call (es_call_begin) or
 * worker step (es_store_current) resolved, for code deep below them.
 */
EsStore *
es_store_resolved(void)
{
	return &store;
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
 * es_extension_schema: the schema of the extension installed in the current
 * database (InvalidOid: none), and its version in extversion (len bytes)
 * when not NULL, read from the catalog (as of the catalog snapshot, which
 * in logical decoding is the decoded change's).
 */
Oid
es_extension_schema(char *extversion, size_t len)
{
	Oid			nspid = InvalidOid;
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum("ultracore_es"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		version = heap_getattr(tup, Anum_pg_extension_extversion, RelationGetDescr(rel), &isnull);

		nspid = ((Form_pg_extension) GETSTRUCT(tup))->extnamespace;
		if (extversion != NULL)
			text_to_cstring_buffer(DatumGetTextPP(version), extversion, len);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return nspid;
}

/*
 * es_store_current: the store of the extension installed in the current
 * database, for code that runs outside an SQL function (the workers), with
 * its catalog's version read afresh.  Returns NULL when the extension is
 * not installed.  Needs a transaction.
 */
EsStore *
es_store_current(void)
{
	char		extversion[NAMEDATALEN] = "";
	Oid			nspid = es_extension_schema(extversion, sizeof(extversion));

	if (!OidIsValid(nspid))
		return NULL;
	if (!store_valid || nspid != store.nspid)
		store_resolve(nspid);
	strlcpy(store.version, extversion, sizeof(store.version));
	store.current = strcmp(extversion, ES_VERSION) == 0;
	return &store;
}

/*
 * es_become_owner: run as the owner of the store's tables, in a restricted
 * security context (as a SECURITY DEFINER function would), until es_become
 * goes back to the role it returns.  Transaction abort goes back too.
 */
EsRole
es_become_owner(const EsStore *s)
{
	EsRole		was;

	GetUserIdAndSecContext(&was.userid, &was.sec_context);
	SetUserIdAndSecContext(s->owner,
						   was.sec_context | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	return was;
}

void
es_become(EsRole role)
{
	SetUserIdAndSecContext(role.userid, role.sec_context);
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
	EsStore    *s;
	EsRole		was;

	if (user_code_depth > 0)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_E_PROHIBITED_SQL_STATEMENT_ATTEMPTED),
				 errmsg("reducers and upcasters cannot call ultracore_es functions"),
				 errdetail("%s was called while a reducer or upcaster was running.",
						   get_func_name(fcinfo->flinfo->fn_oid)),
				 errhint("Compute the new state or payload from the function's arguments alone.")));
	s = es_store_for_function(fcinfo);

	call->store = s;
	was = es_become_owner(s);
	call->caller = was.userid;
	call->sec_context = was.sec_context;
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
 * es_require_read_committed: function (named in the error) works on what
 * is committed once it holds its locks, which a transaction snapshot taken
 * earlier would not show (detail: what it would miss).
 */
void
es_require_read_committed(const char *function, const char *detail)
{
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_STATE),
				 errmsg("%s must run at the READ COMMITTED isolation level", function),
				 errdetail("%s", detail),
				 errhint("Run it in its own transaction, or SET TRANSACTION ISOLATION LEVEL READ COMMITTED.")));
}

/*
 * es_user_function_init: look up fn for calls through es_call_user_function,
 * in cxt.
 */
void
es_user_function_init(EsUserFunction *f, Oid fn, MemoryContext cxt)
{
	HeapTuple	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for function %u", fn);
	f->owner = ((Form_pg_proc) GETSTRUCT(tup))->proowner;
	ReleaseSysCache(tup);
	fmgr_info_cxt(fn, &f->flinfo, cxt);
}

/*
 * es_call_user_function: call a user's reducer or upcaster with one or two
 * arguments (never NULL), as the function's owner, in a restricted security
 * context (as for a SECURITY DEFINER function): the tables' owner is a
 * superuser, and a function registered by anyone else must not run with
 * its rights.  While it runs, the extension's SQL functions refuse to be
 * called: they could rebuild the caches whose entries the caller is using,
 * and a fold that appends would be a strange fold.  Returns NULL as
 * (Datum) 0 with *isnull set.
 */
Datum
es_call_user_function(EsUserFunction *f, Datum arg1, Datum arg2, bool *isnull)
{
	LOCAL_FCINFO(fcinfo, 2);
	volatile Datum result = (Datum) 0;
	Oid			save_userid;
	int			save_sec_context;

	InitFunctionCallInfoData(*fcinfo, &f->flinfo, f->flinfo.fn_nargs, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = arg1;
	fcinfo->args[0].isnull = false;
	fcinfo->args[1].value = arg2;
	fcinfo->args[1].isnull = false;
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(f->owner,
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	user_code_depth++;
	PG_TRY();
	{
		result = FunctionCallInvoke(fcinfo);
	}
	PG_FINALLY();
	{
		user_code_depth--;
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();
	*isnull = fcinfo->isnull;
	return result;
}

/*
 * es_plan: the saved plan of p for the current store, prepared on first use
 * (needs an SPI connection).  The plan lives until the store moves.
 *
 * Plans marked generic skip the plan cache's choice: for lookups by key
 * whose best plan cannot depend on the arguments, a custom plan often looks
 * cheaper than the generic one (range and array estimates), so the cache
 * would plan them again at every execution.  Queries with optional
 * arguments ($1 IS NULL OR ...) need custom plans and are not marked.
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

	plan = SPI_prepare_cursor(sql.data, p->nargs, p->argtypes, p->generic ? CURSOR_OPT_GENERIC_PLAN : 0);
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

static EsPlan read_clusters_plan = {
	"SELECT system_identifier, xid_offset, xmin FROM @extschema@.es_clusters",
	0, {InvalidOid}
};

static EsPlan max_tx_plan = {
	"SELECT pg_catalog.max(tx_id) FROM @extschema@.es_events",
	0, {InvalidOid}
};

static EsPlan record_cluster_plan = {
	"INSERT INTO @extschema@.es_clusters (system_identifier, xid_offset, first_append_at)"
	" VALUES ($1, $2, pg_catalog.now())",
	2, {INT8OID, INT8OID}
};

/*
 * es_max_key: the highest commit-order key stored (tx_id) into *max; false
 * when the store has no event.  Needs an SPI connection.
 */
bool
es_max_key(bool read_only, FullTransactionId *max)
{
	bool		isnull;
	Datum		d;

	if (SPI_execute_plan(es_plan(&max_tx_plan), NULL, NULL, read_only, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the highest transaction id of the event store");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		*max = DatumGetFullTransactionId(d);
	SPI_freetuptable(SPI_tuptable);
	return !isnull;
}

/*
 * es_xid_offset: the offset added to transaction ids in this cluster (see
 * the file header).  With for_write, a cluster not recorded yet is recorded
 * in the current transaction.  Needs an SPI connection.
 */
uint64
es_xid_offset(bool for_write)
{
	uint64		sysid = GetSystemIdentifier();
	uint64		offset = 0;
	bool		found = false;
	bool		other_clusters = false;
	bool		isnull;
	uint64		i;
	FullTransactionId max;

	if (offset_settled)
		return offset_value;

	if (SPI_execute_plan(es_plan(&read_clusters_plan), NULL, NULL, !for_write, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read es_clusters");
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		uint64		row_offset = (uint64) DatumGetInt64(SPI_getbinval(row, desc, 2, &isnull));

		if ((uint64) DatumGetInt64(SPI_getbinval(row, desc, 1, &isnull)) == sysid)
		{
			/* Our own uncommitted row could still roll back: keep checking. */
			offset_value = row_offset;
			found = true;
			if (!TransactionIdIsCurrentTransactionId(DatumGetTransactionId(SPI_getbinval(row, desc, 3, &isnull))))
				offset_settled = true;
		}
		else
		{
			offset = Max(offset, row_offset);
			other_clusters = true;
		}
	}
	if (found)
		return offset_value;

	/* Not recorded yet: a new store, or one restored from another cluster. */
	if (es_max_key(!for_write, &max))
		offset = Max(offset, U64FromFullTransactionId(max) + 1);

	if (for_write)
	{
		Datum		args[2] = {Int64GetDatum((int64) sysid), Int64GetDatum((int64) offset)};

		if (SPI_execute_plan(es_plan(&record_cluster_plan), args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not record the cluster of the event store");
		if (other_clusters || offset > 0)
			ereport(LOG,
					(errmsg("ultracore_es: event store moved to another cluster, transaction ids now offset by %llu",
							(unsigned long long) offset)));
	}
	return offset;
}
