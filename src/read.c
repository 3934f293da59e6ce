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
 * events whose tx_id is below the commit horizon of its snapshot (the oldest
 * transaction still running, see es_commit_horizon_of), ordered by
 * (tx_id, position), and resumes after a (tx_id, position) checkpoint.  No
 * event can later appear below the horizon, so a checkpoint never skips one.
 * append.c keeps this order consistent with each aggregate's versions.
 *
 * All functions read with the snapshot of the calling statement (SPI
 * read-only mode), run as the owner of the tables (es_call_begin), and build
 * their result in a tuplestore in the per-query context.  Rows are fetched
 * through a cursor in slices, so a long stream never sits in memory twice.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "ultracore_es.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/snapmgr.h"
#include "utils/xid8.h"

#define READ_SLICE 1000

static EsPlan stream_plan = {
	"SELECT e.* FROM @extschema@.es_events e"
	" WHERE e.aggregate_id OPERATOR(pg_catalog.=) $1"
	"   AND e.version OPERATOR(pg_catalog.>=) $2"
	"   AND e.version OPERATOR(pg_catalog.<=) $3"
	" ORDER BY e.version",
	3, {TEXTOID, INT8OID, INT8OID}
};

static EsPlan read_all_plan = {
	"SELECT e.* FROM @extschema@.es_events e"
	" WHERE e.tx_id OPERATOR(pg_catalog.>=) $1"
	"   AND (e.tx_id OPERATOR(pg_catalog.>) $1 OR e.position OPERATOR(pg_catalog.>) $2)"
	"   AND e.tx_id OPERATOR(pg_catalog.<) $3"
	"   AND ($4 IS NULL OR e.aggregate_type OPERATOR(pg_catalog.=) $4)"
	"   AND ($5 IS NULL OR e.event_type OPERATOR(pg_catalog.=) ANY ($5))"
	" ORDER BY e.tx_id, e.position"
	" LIMIT $6",
	6, {XID8OID, INT8OID, XID8OID, TEXTOID, TEXTARRAYOID, INT4OID}
};

static EsPlan event_plan = {
	"SELECT e.* FROM @extschema@.es_events e WHERE e.event_id OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}
};

static EsPlan correlated_plan = {
	"SELECT e.* FROM @extschema@.es_events e"
	" WHERE e.correlation_id OPERATOR(pg_catalog.=) $1"
	" ORDER BY e.position",
	1, {TEXTOID}
};

static EsPlan version_plan = {
	"SELECT e.version FROM @extschema@.es_events e"
	" WHERE e.aggregate_id OPERATOR(pg_catalog.=) $1"
	" ORDER BY e.version DESC LIMIT 1",
	1, {TEXTOID}
};

/*
 * Copy one es_events row from SPI into the result set of the call.
 */
static void
read_put_row(ReturnSetInfo *rsinfo, HeapTuple row, TupleDesc desc)
{
	Datum	   *values = palloc(sizeof(Datum) * desc->natts);
	bool	   *nulls = palloc(sizeof(bool) * desc->natts);

	if (desc->natts != rsinfo->setDesc->natts)
		elog(ERROR, "es_events has %d columns, the result type %d", desc->natts, rsinfo->setDesc->natts);
	heap_deform_tuple(row, desc, values, nulls);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	pfree(values);
	pfree(nulls);
}

/*
 * Run plan through a cursor and copy its rows to the result set.  With
 * has_end, stop before the first event that occurred after end: a
 * point-in-time read returns a prefix of the stream, never a stream with
 * holes.
 */
static void
read_emit(ReturnSetInfo *rsinfo, EsPlan *plan, Datum *args, char *nulls,
		  bool has_end, TimestampTz end)
{
	Portal		portal = SPI_cursor_open(NULL, es_plan(plan), args, nulls, true);
	int			occurred_col = 0;
	bool		done = false;

	while (!done)
	{
		uint64		i;

		SPI_cursor_fetch(portal, true, READ_SLICE);
		if (SPI_processed == 0)
			break;
		if (has_end && occurred_col == 0)
			occurred_col = SPI_fnumber(SPI_tuptable->tupdesc, "occurred_at");
		for (i = 0; i < SPI_processed && !done; i++)
		{
			HeapTuple	row = SPI_tuptable->vals[i];
			bool		isnull;

			if (has_end &&
				DatumGetTimestampTz(SPI_getbinval(row, SPI_tuptable->tupdesc, occurred_col, &isnull)) > end)
				done = true;
			else
				read_put_row(rsinfo, row, SPI_tuptable->tupdesc);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
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
				 errmsg("%s " INT64_FORMAT " is out of range", what, v),
				 errdetail("Versions start at 1.")));
	return v;
}

/*
 * es_get_events(aggregate_id, from_version, to_version, end_timestamp)
 *	returns setof es_events
 *
 * The guide's get_events: one aggregate's events in version order, from
 * from_version (default 1) to to_version (default the latest), and with
 * end_timestamp only those up to the first event that occurred after it.
 */
PG_FUNCTION_INFO_V1(es_get_events);
Datum
es_get_events(PG_FUNCTION_ARGS)
{
	char	   *aggregate_id;
	int64		from_version;
	int64		to_version;
	EsCall		call;
	Datum		args[3];

	InitMaterializedSRF(fcinfo, 0);
	aggregate_id = es_arg_id(fcinfo, 0, "aggregate_id", true);
	from_version = arg_version(fcinfo, 1, "from_version", 1);
	to_version = arg_version(fcinfo, 2, "to_version", PG_INT64_MAX);

	es_call_begin(fcinfo, &call);
	args[0] = CStringGetTextDatum(aggregate_id);
	args[1] = Int64GetDatum(from_version);
	args[2] = Int64GetDatum(to_version);
	read_emit((ReturnSetInfo *) fcinfo->resultinfo, &stream_plan, args, NULL,
			  !PG_ARGISNULL(3), PG_ARGISNULL(3) ? 0 : PG_GETARG_TIMESTAMPTZ(3));
	es_call_end(&call);
	return (Datum) 0;
}

/*
 * es_read_all(after_tx_id, after_position, aggregate_type, event_types,
 *			   max_count) returns setof es_events
 *
 * Up to max_count events after the checkpoint (after_tx_id, after_position),
 * in commit order, below the commit horizon of the statement's snapshot,
 * optionally only of one aggregate type and of some event types.  The last
 * row's (tx_id, position) is the next checkpoint.
 */
PG_FUNCTION_INFO_V1(es_read_all);
Datum
es_read_all(PG_FUNCTION_ARGS)
{
	EsCall		call;
	Datum		args[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	char	   *aggregate_type;
	int32		max_count;

	InitMaterializedSRF(fcinfo, 0);
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

	es_call_begin(fcinfo, &call);
	args[0] = PG_ARGISNULL(0) ? FullTransactionIdGetDatum(InvalidFullTransactionId) : PG_GETARG_DATUM(0);
	args[1] = PG_ARGISNULL(1) ? Int64GetDatum(0) : PG_GETARG_DATUM(1);
	args[2] = FullTransactionIdGetDatum(es_commit_horizon_of(GetActiveSnapshot()));
	args[3] = aggregate_type ? CStringGetTextDatum(aggregate_type) : (Datum) 0;
	nulls[3] = aggregate_type ? ' ' : 'n';
	args[4] = PG_ARGISNULL(3) ? (Datum) 0 : PG_GETARG_DATUM(3);
	nulls[4] = PG_ARGISNULL(3) ? 'n' : ' ';
	args[5] = Int32GetDatum(max_count);
	read_emit((ReturnSetInfo *) fcinfo->resultinfo, &read_all_plan, args, nulls, false, 0);
	es_call_end(&call);
	return (Datum) 0;
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
	horizon = es_commit_horizon_of(GetActiveSnapshot());
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
 * es_causation_chain(event_id) returns setof es_events
 *
 * The event and its ancestors through causation_id, root cause first.  The
 * walk ends at an id that is not an event (a command id, say) and stops at a
 * cycle, which caller-supplied causation ids can form.
 */
PG_FUNCTION_INFO_V1(es_causation_chain);
Datum
es_causation_chain(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo;
	char	   *event_id;
	EsCall		call;
	List	   *chain = NIL;
	HTAB	   *seen;
	HASHCTL		ctl;
	TupleDesc	desc = NULL;
	ListCell   *lc;

	InitMaterializedSRF(fcinfo, 0);
	rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	event_id = es_arg_id(fcinfo, 0, "event_id", true);

	ctl.keysize = ES_MAX_ID_LEN + 1;
	ctl.entrysize = ES_MAX_ID_LEN + 1;
	ctl.hcxt = CurrentMemoryContext;
	seen = hash_create("ultracore_es causation chain", 64, &ctl,
					   HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);

	es_call_begin(fcinfo, &call);
	while (event_id != NULL)
	{
		Datum		arg = CStringGetTextDatum(event_id);
		bool		found;
		bool		isnull;
		Datum		cause;
		HeapTuple	row;

		hash_search(seen, event_id, HASH_ENTER, &found);
		if (found)
			break;
		if (SPI_execute_plan(es_plan(&event_plan), &arg, NULL, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read event \"%s\"", event_id);
		if (SPI_processed == 0)
			break;
		row = SPI_copytuple(SPI_tuptable->vals[0]);
		if (desc == NULL)
			desc = SPI_tuptable->tupdesc;
		chain = lcons(row, chain);
		cause = SPI_getbinval(row, SPI_tuptable->tupdesc, SPI_fnumber(SPI_tuptable->tupdesc, "causation_id"), &isnull);
		event_id = isnull ? NULL : TextDatumGetCString(cause);
	}
	foreach(lc, chain)
		read_put_row(rsinfo, (HeapTuple) lfirst(lc), desc);
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
	read_emit((ReturnSetInfo *) fcinfo->resultinfo, &correlated_plan, &arg, NULL, false, 0);
	es_call_end(&call);
	return (Datum) 0;
}
