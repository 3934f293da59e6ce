/*-------------------------------------------------------------------------
 *
 * read.c
 *	  The read paths: one aggregate's stream in version order (with
 *	  point-in-time reads), the global stream in commit order, and the
 *	  causation and correlation views of the store.
 *
 * Commit order (DESIGN.md, decision 1).  Positions are taken at insert and
 * become visible at commit, so a reader that only advances a position skips
 * the events of transactions that commit late.  es_read_all returns only
 * events whose tx_id is below the commit horizon (horizon.c), ordered by
 * (tx_id, position), and resumes after a (tx_id, position) checkpoint.  No
 * event can later appear below the horizon, so a checkpoint never skips one.
 * append.c keeps this order consistent with each aggregate's versions.
 *
 * The functions read with the snapshot of the calling statement (SPI
 * read-only mode), but for es_read_all, which under READ COMMITTED reads
 * with a snapshot taken after its horizon (the one that sees every event
 * below it).  They run as the owner of the tables (es_call_begin) and
 * build their result in a tuplestore whose memory outlives the query
 * (read_result_init).  Rows are fetched through a cursor in slices, so a
 * long stream never sits in memory twice.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "read/read.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/snapmgr.h"
#include "utils/xid8.h"

#include "core/event.h"
#include "core/horizon.h"
#include "core/partitions.h"
#include "core/validate.h"
#include "privacy/personal_data.h"
#include "read/commit_point.h"
#include "read/upcast.h"

#define READ_SLICE 1000

static EsPlan correlated_plan = {
	"SELECT e.* FROM @extschema@.es_events e"
	" WHERE e.correlation_id OPERATOR(pg_catalog.=) $1"
	" ORDER BY e.position",
	1, {TEXTOID}, true
};

static EsPlan version_plan = {
	"SELECT e.version FROM @extschema@.es_events e"
	" WHERE e.aggregate_id OPERATOR(pg_catalog.=) $1"
	" ORDER BY e.version DESC LIMIT 1",
	1, {TEXTOID}, true
};

/*
 * Hand one deformed row to fn, its personal fields revealed (with reveal:
 * for readers of the events; the built-in read models and the mirror take
 * them sealed) and upcast to the current schema versions; false, without
 * calling fn, at the first row past until.  A row of a scan (slot) that
 * neither changed goes to slot_fn instead, when there is one.
 */
static bool
read_step(Datum *values, bool *isnull, bool reveal, const EsReadUntil *until, EsRowCallback fn,
		  TupleTableSlot *slot, EsSlotCallback slot_fn, void *arg)
{
	bool		changed = false;

	if (until != NULL &&
		((until->has_end && DatumGetTimestampTz(values[EV_OCCURRED_AT]) > until->end) ||
		 (until->has_as_of && DatumGetTimestampTz(values[EV_RECORDED_AT]) > until->as_of)))
		return false;
	if (reveal)
		changed = es_personal_reveal_row(es_store_resolved(), values, isnull);
	changed |= es_upcast_row(values, isnull);
	if (slot_fn != NULL && !changed)
		slot_fn(slot, arg);
	else
		fn(values, isnull, arg);
	return true;
}

/*
 * es_read_rows: run plan (a query of whole es_events rows) through a cursor
 * and hand each row to fn through read_step.  The values handed to fn live
 * until fn returns.  Needs SPI.
 */
void
es_read_rows(EsPlan *plan, Datum *args, char *nulls, bool read_only, bool reveal,
			 const EsReadUntil *until, EsRowCallback fn, void *arg)
{
	Portal		portal = SPI_cursor_open(NULL, es_plan(plan), args, nulls, read_only);
	Datum		values[EV_NATTS];
	bool		isnull[EV_NATTS];
	bool		done = false;

	while (!done)
	{
		SPITupleTable *tt;
		uint64		n;
		uint64		i;

		SPI_cursor_fetch(portal, true, READ_SLICE);
		tt = SPI_tuptable;		/* fn may run queries: keep our own copy */
		n = SPI_processed;
		if (n == 0)
			break;
		for (i = 0; i < n && !done; i++)
		{
			CHECK_FOR_INTERRUPTS();
			es_deform_event(tt->vals[i], tt->tupdesc, values, isnull);
			done = !read_step(values, isnull, reveal, until, fn, NULL, NULL, arg);
		}
		SPI_freetuptable(tt);
	}
	SPI_cursor_close(portal);
}

/* The values of an es_events row in a slot (a 1.0 catalog's row: no hash). */
static void
slot_event_values(TupleTableSlot *slot, Datum *values, bool *isnull)
{
	int			natts = slot->tts_tupleDescriptor->natts;

	slot_getallattrs(slot);
	memcpy(values, slot->tts_values, sizeof(Datum) * natts);
	memcpy(isnull, slot->tts_isnull, sizeof(bool) * natts);
	if (natts == EV_HASH)
		isnull[EV_HASH] = true;
}

/*
 * The snapshot a direct read of es_events runs with, pushed: with
 * read_only, the calling statement's, as SPI's read-only mode; without, a
 * new one that sees the current command's own appends (after a command
 * counter increment), as SPI's read-write mode.
 */
static void
read_push_snapshot(bool read_only)
{
	if (read_only)
		PushActiveSnapshot(GetActiveSnapshot());
	else
	{
		CommandCounterIncrement();
		PushCopiedSnapshot(GetTransactionSnapshot());
		UpdateActiveSnapshotCommandId();
	}
}

/*
 * The events from_version to to_version of aggregate_id are not in the
 * database: versions are contiguous from 1, so a gap is history dropped
 * with its partition (es_drop_history).  Said, rather than a partial
 * history returned.
 */
static void
read_history_dropped(const char *aggregate_id, int64 from_version, int64 to_version)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("events %lld to %lld of aggregate \"%s\" were dropped from the database",
					(long long) from_version, (long long) to_version, aggregate_id),
			 errdetail("Their partition was dropped after its export (es_dropped_history)."),
			 errhint("Load the aggregate with es_load_aggregate, which starts from its snapshot, or read from version %lld.",
					 (long long) to_version + 1)));
}

/*
 * es_read_stream: the events of one aggregate from from_version to
 * to_version, in version order, revealed, through read_step.
 *
 * Scans of the unique (aggregate_id, version) index of every partition,
 * merged, not a query: the rows go from the indexes straight to fn,
 * without the copy into an SPI tuple table that took a third of a stream
 * read, and in index order, where a generic plan sorted a bitmap scan;
 * with the snapshot of read_push_snapshot.  fn may run queries.
 */
void
es_read_stream(const char *aggregate_id, int64 from_version, int64 to_version, bool read_only,
			   const EsReadUntil *until, EsRowCallback fn, EsSlotCallback slot_fn, void *arg)
{
	EsStore    *s = es_store_resolved();
	Relation	rel = table_open(s->events_relid, AccessShareLock);
	TupleTableSlot *slot;
	ScanKeyData keys[3];
	EsMergedScan *scan;
	Datum		values[EV_NATTS];
	bool		isnull[EV_NATTS];
	bool		more = true;
	int64		next = Max(from_version, 1);

	read_push_snapshot(read_only);
	ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_TEXTEQ, CStringGetTextDatum(aggregate_id));
	keys[0].sk_collation = C_COLLATION_OID;
	ScanKeyInit(&keys[1], 2, BTGreaterEqualStrategyNumber, F_INT8GE, Int64GetDatum(from_version));
	ScanKeyInit(&keys[2], 2, BTLessEqualStrategyNumber, F_INT8LE, Int64GetDatum(to_version));
	scan = es_merged_scan_begin(s, rel, ES_INDEX_VERSION, GetActiveSnapshot(), keys, 3,
								ForwardScanDirection);
	while (more && (slot = es_merged_scan_next(scan)) != NULL)
	{
		CHECK_FOR_INTERRUPTS();
		slot_event_values(slot, values, isnull);
		/* Versions are contiguous: a gap anywhere, not only before the first row, was dropped. */
		if (DatumGetInt64(values[EV_VERSION]) > next)
			read_history_dropped(aggregate_id, next, DatumGetInt64(values[EV_VERSION]) - 1);
		next = DatumGetInt64(values[EV_VERSION]) + 1;
		more = read_step(values, isnull, true, until, fn, slot, slot_fn, arg);
	}
	es_merged_scan_end(scan);
	PopActiveSnapshot();
	table_close(rel, NoLock);
}

/* Whether position lies in a partition es_drop_history dropped (es_dropped_history). */
static EsPlan dropped_position_plan = {
	"SELECT EXISTS (SELECT FROM @extschema@.es_dropped_history d"
	"                WHERE (d.from_position IS NULL OR d.from_position OPERATOR(pg_catalog.<=) $1)"
	"                  AND $1 OPERATOR(pg_catalog.<) d.to_position)",
	1, {INT8OID}, true
};

static bool
read_position_dropped(int64 position)
{
	Datum		arg = Int64GetDatum(position);
	bool		isnull;
	bool		dropped;

	if (SPI_execute_plan(es_plan(&dropped_position_plan), &arg, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not read es_dropped_history");
	dropped = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_freetuptable(SPI_tuptable);
	return dropped;
}

/* Whether a text Datum is the string str. */
static bool
text_is(Datum d, const char *str)
{
	text	   *t = DatumGetTextPP(d);
	size_t		len = strlen(str);

	return VARSIZE_ANY_EXHDR(t) == len && memcmp(VARDATA_ANY(t), str, len) == 0;
}

/* The event types r keeps, as strings (*ntypes of them); NULL: any. */
static char **
read_types(const EsCommitRead *r, int *ntypes)
{
	Datum	   *elems;
	bool	   *nulls;
	int			nelems;
	char	  **types;
	int			i;

	*ntypes = 0;
	if (r->event_types == NULL)
		return NULL;
	deconstruct_array(r->event_types, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &nelems);
	types = palloc(sizeof(char *) * Max(nelems, 1));
	for (i = 0; i < nelems; i++)
		if (!nulls[i])
			types[(*ntypes)++] = TextDatumGetCString(elems[i]);
	return types;
}

static int
read_int64_cmp(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return x < y ? -1 : x > y;
}

/* es_read_skips: whether position is in skip, nskip sorted positions (a commit point's). */
bool
es_read_skips(const int64 *skip, int nskip, int64 position)
{
	return nskip > 0 && bsearch(&position, skip, nskip, sizeof(int64), read_int64_cmp) != NULL;
}

/* Whether r hands on the event of values: not passed over, and its filters keep it. */
static bool
read_keeps(const EsCommitRead *r, char **types, int ntypes, Datum *values)
{
	int			i;

	if (es_read_skips(r->skip, r->nskip, DatumGetInt64(values[EV_POSITION])))
		return false;
	if (r->aggregate_type != NULL && !text_is(values[EV_AGGREGATE_TYPE], r->aggregate_type))
		return false;
	if (types != NULL)
	{
		for (i = 0; i < ntypes && !text_is(values[EV_EVENT_TYPE], types[i]); i++)
			;
		if (i == ntypes)
			return false;
	}
	return r->keep == NULL || r->keep(values[EV_AGGREGATE_ID], r->keep_arg);
}

static void read_log_order(EsCommitRead *r, bool reveal, char **types, int ntypes, EsRowCallback fn, void *arg);

/*
 * es_read_commit_order: the events of r in commit order, handed to fn
 * through read_step: es_read_all, es_read_log, the consumers and the
 * mirror.  Below the horizon, the events in (tx_id, position) order after
 * its checkpoint and below its horizon, with the active snapshot (the one
 * es_commit_horizon_push took, which sees every event below the horizon);
 * in the log, as read_log_order reads it.
 *
 * Scans of the (tx_id, position) index of every partition, merged, not a
 * query (DESIGN.md, decision 1; README, "Guarantees"): rows go from the
 * indexes to fn without an SPI tuple table.  The scan starts right after the checkpoint (a row
 * comparison key); the filters are applied here, the most rows counted
 * after them.
 */
void
es_read_commit_order(EsCommitRead *r, bool reveal, EsRowCallback fn, void *arg)
{
	EsStore    *s;
	Relation	rel;
	TupleTableSlot *slot;
	ScanKeyData keys[2];
	ScanKeyData after[2];
	EsMergedScan *scan;
	char	  **types;
	int			ntypes;
	int64		n = 0;
	Datum		values[EV_NATTS];
	bool		isnull[EV_NATTS];

	types = read_types(r, &ntypes);
	if (r->in_log)
	{
		read_log_order(r, reveal, types, ntypes, fn, arg);
		return;
	}
	s = es_store_resolved();
	rel = table_open(s->events_relid, AccessShareLock);
	/* (tx_id, position) > the checkpoint: a row comparison, which btree starts at exactly. */
	ScanKeyEntryInitialize(&after[0], SK_ROW_MEMBER, 1, BTGreaterStrategyNumber, XID8OID, InvalidOid,
						   F_XID8CMP, FullTransactionIdGetDatum(r->after_tx));
	ScanKeyEntryInitialize(&after[1], SK_ROW_MEMBER | SK_ROW_END, 2, BTGreaterStrategyNumber, INT8OID, InvalidOid,
						   F_BTINT8CMP, Int64GetDatum(r->after_position));
	ScanKeyEntryInitialize(&keys[0], SK_ROW_HEADER, 1, BTGreaterStrategyNumber, InvalidOid, InvalidOid,
						   InvalidOid, PointerGetDatum(after));
	ScanKeyInit(&keys[1], 1, BTLessStrategyNumber, F_XID8LT, FullTransactionIdGetDatum(r->horizon));
	scan = es_merged_scan_begin(s, rel, ES_INDEX_COMMIT, GetActiveSnapshot(), keys, 2,
								ForwardScanDirection);
	while (n < r->max_count && (slot = es_merged_scan_next(scan)) != NULL)
	{
		CHECK_FOR_INTERRUPTS();
		slot_event_values(slot, values, isnull);
		if (!read_keeps(r, types, ntypes, values))
			continue;
		n++;
		(void) read_step(values, isnull, reveal, NULL, fn, slot, r->slot_fn, arg);
	}
	es_merged_scan_end(scan);
	table_close(rel, NoLock);
}

/*
 * es_read_event: the event event_id (if it exists) through read_step,
 * found by its key (es_event_by_id: the key table, then the 1.0 table's
 * primary key), with the snapshot of read_push_snapshot.
 */
void
es_read_event(const char *event_id, bool read_only, bool reveal, EsRowCallback fn, void *arg)
{
	EsStore    *s = es_store_resolved();
	Relation	rel = table_open(s->events_relid, AccessShareLock);
	HeapTuple	row;
	Datum		values[EV_NATTS];
	bool		isnull[EV_NATTS];

	read_push_snapshot(read_only);
	row = es_event_by_id(s, rel, event_id, GetActiveSnapshot());
	PopActiveSnapshot();
	if (row != NULL)
	{
		es_deform_event(row, RelationGetDescr(rel), values, isnull);
		(void) read_step(values, isnull, reveal, NULL, fn, NULL, NULL, arg);
	}
	table_close(rel, NoLock);
}

/*
 * The memory of the set-returning functions' results.
 *
 * A page of 1,000 events is about half a megabyte of tuples in the
 * tuplestore that the FunctionScan reads back.  In the query's memory, its
 * larger blocks came fresh from the kernel at every call and went back at
 * the end of the query, so every call paid a page fault per 4 kB it wrote
 * (6.6% of an es_read_all page in perf).  The tuplestore lives instead in
 * a context that outlives the queries: the scan frees the tuples one by one
 * when it ends, and the next call reuses their chunks, on pages already
 * mapped.  When no query uses the context any more (a callback on each
 * user's query memory, which also runs when an error ends the query before
 * its scan freed the tuples) and it holds more than RESULT_KEEP_BYTES, it
 * is emptied: it never keeps more than that for long.
 */
#define RESULT_KEEP_BYTES	(8 * 1024 * 1024)

static MemoryContext result_cxt = NULL;
static int	result_users = 0;

static void
read_result_done(void *arg)
{
	if (--result_users == 0 && MemoryContextMemAllocated(result_cxt, true) > RESULT_KEEP_BYTES)
		MemoryContextReset(result_cxt);
}

/* InitMaterializedSRF, with the tuplestore in result_cxt. */
static void
read_result_init(FunctionCallInfo fcinfo)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContextCallback *done;
	MemoryContext old;

	InitMaterializedSRF(fcinfo, 0);
	if (result_cxt == NULL)
		result_cxt = AllocSetContextCreate(TopMemoryContext, "ultracore_es read results",
										   ALLOCSET_DEFAULT_SIZES);
	done = MemoryContextAlloc(rsinfo->econtext->ecxt_per_query_memory, sizeof(MemoryContextCallback));
	done->func = read_result_done;
	done->arg = NULL;
	MemoryContextRegisterResetCallback(rsinfo->econtext->ecxt_per_query_memory, done);
	result_users++;
	tuplestore_end(rsinfo->setResult);
	old = MemoryContextSwitchTo(result_cxt);
	rsinfo->setResult = tuplestore_begin_heap((rsinfo->allowedModes & SFRM_Materialize_Random) != 0,
											  false, work_mem);
	MemoryContextSwitchTo(old);
}

/* es_read_rows callback of the SRFs: add the row to the result set. */
static void
read_put_row(Datum *values, bool *nulls, void *arg)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) arg;

	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

/*
 * The same for a row as stored: copied as it is, where forming it again
 * from its values took a fifth of es_read_all's time (palloc0, fill).  A
 * table whose columns are not the result's (one dropped by hand) goes
 * through the values.
 */
static void
read_put_slot(TupleTableSlot *slot, void *arg)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) arg;

	if (slot->tts_tupleDescriptor->natts == rsinfo->setDesc->natts)
		tuplestore_puttupleslot(rsinfo->setResult, slot);
	else
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, slot->tts_values, slot->tts_isnull);
}

static int64
arg_version(FunctionCallInfo fcinfo, int argno, const char *what, int64 dflt)
{
	int64		v;

	if (PG_ARGISNULL(argno))
		return dflt;
	v = PG_GETARG_INT64(argno);
	if (v < 0)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("%s %lld is out of range", what, (long long) v),
				 errdetail("Versions start at 1.")));
	return v;
}

/* es_read_until: a point-in-time read's bounds, from two timestamptz arguments. */
EsReadUntil *
es_read_until(FunctionCallInfo fcinfo, int end_argno, int as_of_argno)
{
	EsReadUntil *until = palloc0(sizeof(EsReadUntil));

	if (PG_NARGS() > end_argno && !PG_ARGISNULL(end_argno))
	{
		until->has_end = true;
		until->end = PG_GETARG_TIMESTAMPTZ(end_argno);
	}
	if (PG_NARGS() > as_of_argno && !PG_ARGISNULL(as_of_argno))
	{
		until->has_as_of = true;
		until->as_of = PG_GETARG_TIMESTAMPTZ(as_of_argno);
	}
	return until;
}

/*
 * es_get_events(aggregate_id, from_version, to_version, end_timestamp, as_of)
 *	returns setof es_events
 *
 * The guide's get_events: one aggregate's events in version order, from
 * from_version (default 1) to to_version (default the latest); with
 * end_timestamp only those up to the first event that occurred after it
 * (business time), with as_of those up to the first event recorded after
 * it (what the store held then).  The 1.0 catalog's function has no as_of.
 */
PG_FUNCTION_INFO_V1(es_get_events);
Datum
es_get_events(PG_FUNCTION_ARGS)
{
	char	   *aggregate_id;
	int64		from_version;
	int64		to_version;
	EsCall		call;

	read_result_init(fcinfo);
	aggregate_id = es_arg_id(fcinfo, 0, "aggregate_id", true);
	from_version = arg_version(fcinfo, 1, "from_version", 1);
	to_version = arg_version(fcinfo, 2, "to_version", PG_INT64_MAX);

	es_call_begin(fcinfo, &call);
	es_read_stream(aggregate_id, from_version, to_version, true, es_read_until(fcinfo, 3, 4),
				   read_put_row, read_put_slot, fcinfo->resultinfo);
	es_call_end(&call);
	return (Datum) 0;
}

/*
 * A checkpoint's tx_id given as a number (the bigint and text signatures,
 * for drivers that have no xid8: an integer literal is int, and int has no
 * cast to xid8).
 */
static FullTransactionId
checkpoint_tx_of(int64 v)
{
	if (v < 0)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("after_tx_id must not be negative"),
				 errdetail("A checkpoint's tx_id is a transaction id: 0 or above.")));
	return FullTransactionIdFromU64((uint64) v);
}

/*
 * es_read_all(after_tx_id, after_position, aggregate_type, event_types,
 *			   max_count) returns setof es_events
 *
 * Up to max_count events after the checkpoint (after_tx_id, after_position),
 * in commit order, below the commit horizon (under REPEATABLE READ and
 * SERIALIZABLE, the transaction snapshot's), optionally only of one
 * aggregate type and of some event types.  The last row's (tx_id,
 * position) is the next checkpoint.
 */
static Datum read_all(FunctionCallInfo fcinfo, FullTransactionId after_tx);

PG_FUNCTION_INFO_V1(es_read_all);
Datum
es_read_all(PG_FUNCTION_ARGS)
{
	return read_all(fcinfo, PG_ARGISNULL(0) ? InvalidFullTransactionId : PG_GETARG_FULLTRANSACTIONID(0));
}

/* es_read_all(after_tx_id bigint, ...) */
PG_FUNCTION_INFO_V1(es_read_all_bigint);
Datum
es_read_all_bigint(PG_FUNCTION_ARGS)
{
	return read_all(fcinfo, PG_ARGISNULL(0) ? InvalidFullTransactionId : checkpoint_tx_of(PG_GETARG_INT64(0)));
}

/* es_read_all(after_tx_id text, ...): int8in, not xid8in, which takes what is no number as 0 */
PG_FUNCTION_INFO_V1(es_read_all_text);
Datum
es_read_all_text(PG_FUNCTION_ARGS)
{
	return read_all(fcinfo, PG_ARGISNULL(0) ? InvalidFullTransactionId
					: checkpoint_tx_of(DatumGetInt64(DirectFunctionCall1(int8in,
																		 CStringGetDatum(text_to_cstring(PG_GETARG_TEXT_PP(0)))))));
}

static Datum
read_all(FunctionCallInfo fcinfo, FullTransactionId after_tx)
{
	EsCall		call;
	EsCommitRead r;
	char	   *aggregate_type;
	int32		max_count;

	read_result_init(fcinfo);
	aggregate_type = es_arg_name(fcinfo, 2, "aggregate_type", false);
	max_count = PG_ARGISNULL(4) ? 1000 : PG_GETARG_INT32(4);
	if (max_count < 1)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("max_count must be at least 1")));
	if (PG_ARGISNULL(1) ? false : PG_GETARG_INT64(1) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("after_position must not be negative")));

	memset(&r, 0, sizeof(r));
	r.after_tx = after_tx;
	r.after_position = PG_ARGISNULL(1) ? 0 : PG_GETARG_INT64(1);
	r.aggregate_type = aggregate_type;
	r.event_types = PG_ARGISNULL(3) ? NULL : PG_GETARG_ARRAYTYPE_P(3);
	r.max_count = max_count;
	r.slot_fn = read_put_slot;
	es_call_begin(fcinfo, &call);
	r.horizon = es_commit_horizon_push();
	es_read_commit_order(&r, true, read_put_row, fcinfo->resultinfo);
	PopActiveSnapshot();
	es_call_end(&call);
	return (Datum) 0;
}

/*
 * es_read_log(after_seq, after_position, max_count)
 *	returns table (seq bigint, <the columns of es_events>)
 *
 * Up to max_count events after the checkpoint (after_seq, after_position)
 * in commit order, as the sequencer numbered their transactions into
 * es_commit_log (sequencer.c): by seq, each transaction's events in
 * position order.  A transaction left open holds no later one back here,
 * unlike es_read_all's commit horizon; with wal_level below logical the
 * log does not grow.
 */

/* A row of es_read_log: the event's seq first, then the event as read_step left it. */
typedef struct LogRow
{
	ReturnSetInfo *rsinfo;
	EsCommitRead *read;
} LogRow;

static void
read_put_log_row(Datum *values, bool *nulls, void *arg)
{
	LogRow	   *row = (LogRow *) arg;
	Datum		out_values[EV_NATTS + 1];
	bool		out_nulls[EV_NATTS + 1];

	out_values[0] = Int64GetDatum(row->read->seq);
	out_nulls[0] = false;
	memcpy(out_values + 1, values, sizeof(Datum) * EV_NATTS);
	memcpy(out_nulls + 1, nulls, sizeof(bool) * EV_NATTS);
	tuplestore_putvalues(row->rsinfo->setResult, row->rsinfo->setDesc, out_values, out_nulls);
}

/*
 * The positions of a log row, in order: as the plugin wrote them (the
 * order the transaction inserted them, which its nextval calls made
 * increasing) or as the tail aggregated them; sorted here if not.
 */
static int64 *
read_log_positions(Datum d, int64 seq, int *n)
{
	Datum	   *elems;
	bool	   *nulls;
	int64	   *positions;
	bool		sorted = true;
	int			i;

	deconstruct_array(DatumGetArrayTypeP(d), INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &elems, &nulls, n);
	positions = palloc(sizeof(int64) * Max(*n, 1));
	for (i = 0; i < *n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("row %lld of es_commit_log has a null position", (long long) seq)));
		positions[i] = DatumGetInt64(elems[i]);
		if (i > 0 && positions[i - 1] >= positions[i])
			sorted = false;
	}
	pfree(elems);
	pfree(nulls);
	if (!sorted)
		qsort(positions, *n, sizeof(int64), read_int64_cmp);
	return positions;
}

/* The columns of es_commit_log that read_log_order reads, by number (the 1.1 script's order). */
#define LOG_ATT_SEQ			1
#define LOG_ATT_POSITIONS	4

/* Whether column attnum of desc is there with type typid. */
static bool
read_log_column_is(TupleDesc desc, AttrNumber attnum, Oid typid)
{
	Form_pg_attribute att;

	if (attnum > desc->natts)
		return false;
	att = TupleDescAttr(desc, attnum - 1);
	return !att->attisdropped && att->atttypid == typid;
}

/*
 * The events of r in the log, after (after_seq, after_seq_position), each
 * handed to fn with r->seq set to its row's; r->end_seq and end_position
 * say how far it read (every event up to there handed on or passed over),
 * r->log_ended whether it read the last row there was.  A row of the log
 * is added only once its events are visible, so the active snapshot, which
 * sees the row, sees them.
 *
 * Index scans, not a query, as below the horizon: the log by seq from the
 * checkpoint's row, and each of its positions looked up in es_events'
 * unique position index, the rows going from the index to read_step.
 */
static void
read_log_order(EsCommitRead *r, bool reveal, char **types, int ntypes, EsRowCallback fn, void *arg)
{
	EsStore    *s = es_store_resolved();
	Relation	log = table_open(s->commit_log_relid, AccessShareLock);
	Relation	log_idx = index_open(s->commit_log_idx, AccessShareLock);
	Relation	events = table_open(s->events_relid, AccessShareLock);
	TupleTableSlot *log_slot = table_slot_create(log, NULL);
	TupleTableSlot *slot;
	ScanKeyData key;
	IndexScanDesc log_scan;
	EsPositionLookup *lookup;
	int64		n = 0;
	Datum		values[EV_NATTS];
	bool		isnull[EV_NATTS];

	if (!read_log_column_is(RelationGetDescr(log), LOG_ATT_SEQ, INT8OID) ||
		!read_log_column_is(RelationGetDescr(log), LOG_ATT_POSITIONS, INT8ARRAYOID))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("es_commit_log does not have the columns the extension reads"),
				 errdetail("Column %d must be seq (bigint) and column %d positions (bigint[]).",
						   LOG_ATT_SEQ, LOG_ATT_POSITIONS),
				 errhint("The table was altered outside the extension's scripts; restore its definition.")));
	r->log_ended = false;
	r->end_seq = r->after_seq;
	r->end_position = r->after_seq_position;
	ScanKeyInit(&key, 1, BTGreaterEqualStrategyNumber, F_INT8GE, Int64GetDatum(r->after_seq));
	log_scan = index_beginscan(log, log_idx, GetActiveSnapshot(), 1, 0);
	index_rescan(log_scan, &key, 1, NULL, 0);
	lookup = es_position_lookup_begin(s, events, GetActiveSnapshot());
	while (n < r->max_count)
	{
		bool		null;
		int64		seq;
		int64	   *positions;
		int			npositions;
		int			i;

		if (!index_getnext_slot(log_scan, ForwardScanDirection, log_slot))
		{
			r->log_ended = true;
			break;
		}
		seq = DatumGetInt64(slot_getattr(log_slot, LOG_ATT_SEQ, &null));
		positions = read_log_positions(slot_getattr(log_slot, LOG_ATT_POSITIONS, &null), seq, &npositions);
		r->seq = seq;
		for (i = 0; i < npositions && n < r->max_count; i++)
		{
			FullTransactionId tx;

			CHECK_FOR_INTERRUPTS();
			if (seq == r->after_seq && positions[i] <= r->after_seq_position)
				continue;
			slot = es_position_lookup(lookup, positions[i]);
			r->end_seq = seq;
			r->end_position = positions[i];
			if (slot == NULL)
			{
				/* Dropped with its partition, as es_read_all passes over it. */
				if (read_position_dropped(positions[i]))
					continue;
				ereport(ERROR,
						(errcode(ERRCODE_DATA_CORRUPTED),
						 errmsg("the event at position %lld of row %lld of es_commit_log is missing",
								(long long) positions[i], (long long) seq)));
			}
			slot_event_values(slot, values, isnull);
			/* At or below the checkpoint: the reader had it before it read the log. */
			tx = DatumGetFullTransactionId(values[EV_TX_ID]);
			if (FullTransactionIdPrecedes(tx, r->after_tx) ||
				(FullTransactionIdEquals(tx, r->after_tx) && positions[i] <= r->after_position))
				continue;
			if (!read_keeps(r, types, ntypes, values))
				continue;
			n++;
			(void) read_step(values, isnull, reveal, NULL, fn, slot, r->slot_fn, arg);
		}
		pfree(positions);
	}
	es_position_lookup_end(lookup);
	index_endscan(log_scan);
	ExecDropSingleTupleTableSlot(log_slot);
	table_close(events, NoLock);
	index_close(log_idx, NoLock);
	table_close(log, NoLock);
}

PG_FUNCTION_INFO_V1(es_read_log);
Datum
es_read_log(PG_FUNCTION_ARGS)
{
	EsCall		call;
	int64		after_seq = PG_ARGISNULL(0) ? 0 : PG_GETARG_INT64(0);
	int64		after_position = PG_ARGISNULL(1) ? 0 : PG_GETARG_INT64(1);
	int64		max_count = PG_ARGISNULL(2) ? 1000 : PG_GETARG_INT32(2);
	EsCommitRead r;
	LogRow		row;

	/* As es_read_all's: NULL is the start, and 1,000 events. */
	read_result_init(fcinfo);
	if (after_seq < 0 || after_position < 0)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("after_seq and after_position must not be negative"),
				 errdetail("A checkpoint of the commit log is the last row's (seq, position); (0, 0) reads from the start.")));
	if (max_count < 1)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("max_count must be at least 1")));
	memset(&r, 0, sizeof(r));
	r.in_log = true;
	r.after_seq = after_seq;
	r.after_seq_position = after_position;
	r.max_count = max_count;
	row.rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	row.read = &r;
	es_call_begin(fcinfo, &call);
	es_read_commit_order(&r, true, read_put_log_row, &row);
	es_call_end(&call);
	return (Datum) 0;
}

/*
 * es_read_log_start(after_tx) returns bigint
 *
 * Where a reader that paged es_read_all up to the checkpoint (after_tx,
 * after_position) goes on in the commit log: es_read_log from the result
 * and position 0, skipping the rows at or below that checkpoint (the
 * position only matters to the skip).  Every event after the checkpoint
 * has a key (tx_id) of at least after_tx, so it is in a row whose largest
 * key is too, or in one numbered later; the
 * rows from the first such one on may also hold events the reader had
 * (a transaction with a smaller key that committed later), which the skip
 * leaves out.  Past the last row when none has such a key.
 */
PG_FUNCTION_INFO_V1(es_read_log_start);
Datum
es_read_log_start(PG_FUNCTION_ARGS)
{
	EsCall		call;
	int64		seq;

	if (PG_ARGISNULL(0))
		PG_RETURN_INT64(0);		/* no checkpoint: the whole log */
	es_call_begin(fcinfo, &call);
	seq = es_commit_log_start(PG_GETARG_FULLTRANSACTIONID(0));
	es_call_end(&call);
	PG_RETURN_INT64(seq);
}

/*
 * es_commit_horizon() returns xid8
 *
 * Every event with a smaller tx_id is committed (or will never exist).  A
 * reader that took the horizon before an es_read_all call which returned
 * fewer than max_count rows may checkpoint at (horizon, 0): this skips the
 * events its filters did not match without rescanning them next time.
 */
PG_FUNCTION_INFO_V1(es_commit_horizon);
Datum
es_commit_horizon(PG_FUNCTION_ARGS)
{
	EsCall		call;
	FullTransactionId horizon;

	es_call_begin(fcinfo, &call);
	horizon = es_commit_horizon_now();
	es_call_end(&call);
	PG_RETURN_FULLTRANSACTIONID(horizon);
}

/*
 * es_aggregate_version(aggregate_id) returns bigint
 *
 * The aggregate's current version; 0 when it does not exist, which is what
 * es_append expects for a new aggregate.
 */
PG_FUNCTION_INFO_V1(es_aggregate_version);
Datum
es_aggregate_version(PG_FUNCTION_ARGS)
{
	char	   *aggregate_id = es_arg_id(fcinfo, 0, "aggregate_id", true);
	EsCall		call;
	Datum		arg;
	int64		version = 0;
	bool		isnull;

	es_call_begin(fcinfo, &call);
	arg = CStringGetTextDatum(aggregate_id);
	if (SPI_execute_plan(es_plan(&version_plan), &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read aggregate \"%s\"", aggregate_id);
	if (SPI_processed == 1)
		version = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	es_call_end(&call);
	PG_RETURN_INT64(version);
}

/*
 * es_event_position(event_id) returns bigint
 *
 * The position of an event (NULL: no such event), by its key: the key
 * table, or the 1.0 table's primary key.  Joins on an event id go through
 * it: es_events has no index on event_id across its partitions.
 */
PG_FUNCTION_INFO_V1(es_event_position);
Datum
es_event_position(PG_FUNCTION_ARGS)
{
	char	   *event_id = es_arg_id(fcinfo, 0, "event_id", true);
	EsCall		call;
	Relation	rel;
	HeapTuple	row;
	bool		isnull;
	int64		position = 0;

	es_call_begin(fcinfo, &call);
	rel = table_open(call.store->events_relid, AccessShareLock);
	row = es_event_by_id(call.store, rel, event_id, GetActiveSnapshot());
	if (row != NULL)
		position = DatumGetInt64(heap_getattr(row, EV_POSITION + 1, RelationGetDescr(rel), &isnull));
	table_close(rel, NoLock);
	es_call_end(&call);
	if (row == NULL)
		PG_RETURN_NULL();
	PG_RETURN_INT64(position);
}

/*
 * es_lag(after_tx_id xid8, after_position bigint, max_count bigint,
 *		  OUT events bigint, OUT first_recorded_at timestamptz)
 *
 * How far a reader at a commit-order checkpoint is behind: the committed
 * events after it (counted up to max_count), and when the first of them
 * was recorded (NULL: none).  es_stats' lag, read from the partitions'
 * commit-order indexes: a query over every partition was planned at each
 * call, at a cost that JIT compiled for a second.
 */
PG_FUNCTION_INFO_V1(es_lag);
Datum
es_lag(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	EsCall		call;
	Relation	rel;
	EsMergedScan *scan;
	TupleTableSlot *slot;
	ScanKeyData key;
	ScanKeyData after[2];
	int64		max_count;
	int64		n = 0;
	Datum		result[2] = {0, 0};
	bool		nulls[2] = {false, true};
	bool		isnull;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("after_tx_id, after_position and max_count must not be NULL")));
	max_count = PG_GETARG_INT64(2);
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "es_lag must return a row");
	es_call_begin(fcinfo, &call);
	rel = table_open(call.store->events_relid, AccessShareLock);
	ScanKeyEntryInitialize(&after[0], SK_ROW_MEMBER, 1, BTGreaterStrategyNumber, XID8OID, InvalidOid,
						   F_XID8CMP, PG_GETARG_DATUM(0));
	ScanKeyEntryInitialize(&after[1], SK_ROW_MEMBER | SK_ROW_END, 2, BTGreaterStrategyNumber, INT8OID, InvalidOid,
						   F_BTINT8CMP, PG_GETARG_DATUM(1));
	ScanKeyEntryInitialize(&key, SK_ROW_HEADER, 1, BTGreaterStrategyNumber, InvalidOid, InvalidOid,
						   InvalidOid, PointerGetDatum(after));
	scan = es_merged_scan_begin(call.store, rel, ES_INDEX_COMMIT, GetActiveSnapshot(), &key, 1,
								ForwardScanDirection);
	while (n < max_count && (slot = es_merged_scan_next(scan)) != NULL)
	{
		CHECK_FOR_INTERRUPTS();
		if (n++ == 0)
		{
			result[1] = slot_getattr(slot, EV_RECORDED_AT + 1, &isnull);
			nulls[1] = false;
		}
	}
	es_merged_scan_end(scan);
	table_close(rel, NoLock);
	es_call_end(&call);
	result[0] = Int64GetDatum(n);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), result, nulls)));
}

/*
 * es_causation_chain(event_id) returns setof es_events
 *
 * The event and its ancestors through causation_id, root cause first.  The
 * walk ends at an id that is not an event (a command id, say) and stops at a
 * cycle, which caller-supplied causation ids can form.
 */
PG_FUNCTION_INFO_V1(es_causation_chain);

/* es_read_rows callback of the causation walk: keep the row, note its cause. */
typedef struct CausationWalk
{
	List	   *rows;			/* HeapTuples in the result's descriptor, root first */
	TupleDesc	desc;
	char	   *cause;
} CausationWalk;

static void
causation_step(Datum *values, bool *nulls, void *arg)
{
	CausationWalk *walk = (CausationWalk *) arg;

	walk->rows = lcons(heap_form_tuple(walk->desc, values, nulls), walk->rows);
	walk->cause = nulls[EV_CAUSATION_ID] ? NULL : TextDatumGetCString(values[EV_CAUSATION_ID]);
}

Datum
es_causation_chain(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo;
	char	   *event_id;
	EsCall		call;
	CausationWalk walk;
	HTAB	   *seen;
	HASHCTL		ctl;
	ListCell   *lc;

	InitMaterializedSRF(fcinfo, 0);
	rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	event_id = es_arg_id(fcinfo, 0, "event_id", true);

	ctl.keysize = ES_MAX_ID_LEN + 1;
	ctl.entrysize = ES_MAX_ID_LEN + 1;
	ctl.hcxt = CurrentMemoryContext;
	seen = hash_create("ultracore_es causation chain", 64, &ctl,
					   HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	walk.rows = NIL;
	walk.desc = rsinfo->setDesc;

	es_call_begin(fcinfo, &call);
	while (event_id != NULL)
	{
		bool		found;

		CHECK_FOR_INTERRUPTS();
		hash_search(seen, event_id, HASH_ENTER, &found);
		if (found)
			break;
		walk.cause = NULL;
		es_read_event(event_id, true, true, causation_step, &walk);
		event_id = walk.cause;
	}
	foreach(lc, walk.rows)
		tuplestore_puttuple(rsinfo->setResult, (HeapTuple) lfirst(lc));
	es_call_end(&call);
	return (Datum) 0;
}

/*
 * es_correlated_events(correlation_id) returns setof es_events
 *
 * Every event of one request (one correlation id), in position order.
 */
PG_FUNCTION_INFO_V1(es_correlated_events);
Datum
es_correlated_events(PG_FUNCTION_ARGS)
{
	char	   *correlation_id = es_arg_id(fcinfo, 0, "correlation_id", true);
	EsCall		call;
	Datum		arg;

	InitMaterializedSRF(fcinfo, 0);
	es_call_begin(fcinfo, &call);
	arg = CStringGetTextDatum(correlation_id);
	es_read_rows(&correlated_plan, &arg, NULL, true, true, NULL, read_put_row, fcinfo->resultinfo);
	es_call_end(&call);
	return (Datum) 0;
}
