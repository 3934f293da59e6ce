/*-------------------------------------------------------------------------
 *
 * handler.c
 *	  Event handlers and their dead letters: the SQL functions that register,
 *	  pause, resume and remove handlers and retry dead letters.  The worker
 *	  delivers the events (consumer.c).
 *
 * A handler is a function(event es_events) that the worker calls once per
 * committed event of the handler's event types, in commit order, as the role
 * that registered it.  Every change here wakes the worker when the
 * transaction commits.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "delivery/consumer.h"

#include "access/htup_details.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/regproc.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/xid8.h"

#include "core/horizon.h"
#include "core/store.h"
#include "delivery/worker.h"

static char *
handler_name(FunctionCallInfo fcinfo, int argno)
{
	return es_arg_consumer_name(fcinfo, argno, "handler name");
}

static EsPlan register_plan = {
	"WITH c AS ("
	"  INSERT INTO @extschema@.es_consumers (name, kind, checkpoint_tx, checkpoint_position)"
	"  VALUES ($1, 'handler', $7, 0)"
	"  ON CONFLICT (name) DO NOTHING)"
	" INSERT INTO @extschema@.es_handlers (name, function, event_types, max_retries, backoff, run_as)"
	" VALUES ($1, $2, $3, $4, $5, $6)"
	" ON CONFLICT (name) DO UPDATE"
	"    SET function = excluded.function, event_types = excluded.event_types,"
	"        max_retries = excluded.max_retries, backoff = excluded.backoff, run_as = excluded.run_as",
	7, {TEXTOID, REGPROCEDUREOID, TEXTARRAYOID, INT4OID, INTERVALOID, REGROLEOID, XID8OID}
};

/* Release 1.1's catalog: with the timeout and the parallelism; returns the parallelism it had. */
static EsPlan register_1_1_plan = {
	"WITH c AS ("
	"  INSERT INTO @extschema@.es_consumers (name, kind, checkpoint_tx, checkpoint_position)"
	"  VALUES ($1, 'handler', $7, 0)"
	"  ON CONFLICT (name) DO NOTHING),"
	" old AS (SELECT parallelism FROM @extschema@.es_handlers WHERE name OPERATOR(pg_catalog.=) $1),"
	" h AS ("
	"  INSERT INTO @extschema@.es_handlers (name, function, event_types, max_retries, backoff, run_as, timeout,"
	"                                       parallelism)"
	"  VALUES ($1, $2, $3, $4, $5, $6, $8, $9)"
	"  ON CONFLICT (name) DO UPDATE"
	"     SET function = excluded.function, event_types = excluded.event_types,"
	"         max_retries = excluded.max_retries, backoff = excluded.backoff, run_as = excluded.run_as,"
	"         timeout = excluded.timeout, parallelism = excluded.parallelism)"
	" SELECT COALESCE((SELECT parallelism FROM old), 1)",
	9, {TEXTOID, REGPROCEDUREOID, TEXTARRAYOID, INT4OID, INTERVALOID, REGROLEOID, XID8OID, INTERVALOID, INT4OID}
};

/* The most segments a handler can be split into (es_segment_of). */
#define MAX_PARALLELISM 64

/*
 * What a registration sets.  timeout NULL: none; catalog_1_1: the catalog
 * has release 1.1's columns (the 1.0 SQL functions, which the new library
 * still serves until ALTER EXTENSION UPDATE, set the 1.0 ones only).
 */
typedef struct HandlerSettings
{
	Oid			function;
	Datum		event_types;	/* text[], or 0 for every type */
	int32		max_retries;
	Interval   *backoff;		/* NULL: the default */
	bool		replay;
	Interval   *timeout;
	int32		parallelism;
	bool		catalog_1_1;
} HandlerSettings;

static EsPlan kind_plan = {
	"SELECT kind FROM @extschema@.es_consumers WHERE name OPERATOR(pg_catalog.=) $1 FOR UPDATE",
	1, {TEXTOID}
};

/*
 * Lock the consumer row of handler name; false when there is none, an error
 * when the name belongs to another kind of consumer.
 */
static bool
handler_lock(const char *name)
{
	Datum		arg = CStringGetTextDatum(name);
	bool		isnull;
	char	   *kind;

	if (SPI_execute_plan(es_plan(&kind_plan), &arg, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up consumer \"%s\"", name);
	if (SPI_processed == 0)
		return false;
	kind = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (strcmp(kind, "handler") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("consumer \"%s\" is a %s, not a handler", name, kind)));
	return true;
}

static void
handler_not_found(const char *name)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("handler \"%s\" does not exist", name),
			 errhint("See es_handler_status for the registered handlers.")));
}

static void
handler_must_exist(const char *name)
{
	if (!handler_lock(name))
		handler_not_found(name);
}

/*
 * Insert or update handler name (its consumer row locked, or absent) to run
 * as the caller.  A new handler starts at the first event with replay,
 * else at the current commit horizon.  A new parallelism splits the
 * handler again (segment.c).
 */
static void
handler_register(EsCall *call, const char *name, const HandlerSettings *h)
{
	Datum		args[9];
	char		nulls[9] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};

	es_check_consumer_function(h->function, call->store, call->caller, "handler");
	args[0] = CStringGetTextDatum(name);
	args[1] = ObjectIdGetDatum(h->function);
	args[2] = h->event_types;
	nulls[2] = h->event_types == (Datum) 0 ? 'n' : ' ';
	args[3] = Int32GetDatum(h->max_retries);
	args[4] = h->backoff ? IntervalPGetDatum(h->backoff)
		: DirectFunctionCall3(interval_in, CStringGetDatum("1 second"), ObjectIdGetDatum(InvalidOid),
							  Int32GetDatum(-1));
	args[5] = ObjectIdGetDatum(call->caller);
	args[6] = FullTransactionIdGetDatum(h->replay ? InvalidFullTransactionId : es_commit_horizon_now());
	args[7] = h->timeout ? IntervalPGetDatum(h->timeout) : (Datum) 0;
	nulls[7] = h->timeout ? ' ' : 'n';
	args[8] = Int32GetDatum(h->parallelism);
	if (!h->catalog_1_1)
	{
		if (SPI_execute_plan(es_plan(&register_plan), args, nulls, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not register handler \"%s\"", name);
	}
	else
	{
		bool		isnull;
		int32		was;

		if (SPI_execute_plan(es_plan(&register_1_1_plan), args, nulls, false, 1) != SPI_OK_SELECT ||
			SPI_processed != 1)
			elog(ERROR, "could not register handler \"%s\"", name);
		was = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		es_segment_split(name, was, h->parallelism);
	}
	es_worker_wake_at_commit();
}

static EsPlan builtin_plan = {
	"SELECT function, event_types FROM @extschema@.es_builtin_handlers WHERE name OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}
};

/*
 * Switch on built-in handler name, not registered yet: register it from the
 * present with its default event types.  False when name is not built in.
 */
static bool
handler_switch_on_builtin(EsCall *call, const char *name, bool catalog_1_1)
{
	HandlerSettings h = {InvalidOid, (Datum) 0, 3, NULL, false, NULL, 1, catalog_1_1};
	Datum		arg = CStringGetTextDatum(name);
	bool		fn_null;
	bool		types_null;
	Datum		fn;
	Datum		types;

	if (SPI_execute_plan(es_plan(&builtin_plan), &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up built-in handler \"%s\"", name);
	if (SPI_processed == 0)
		return false;
	fn = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &fn_null);
	types = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &types_null);
	h.function = DatumGetObjectId(fn);
	h.event_types = types_null ? (Datum) 0 : SPI_datumTransfer(types, false, -1);
	handler_register(call, name, &h);
	return true;
}

/*
 * es_register_handler(name, function, event_types, max_retries, backoff,
 *					   replay_history, timeout, parallelism) returns void
 *
 * Registers a handler, or reconfigures it (its checkpoint stays).  A new
 * handler starts at the current commit horizon, or with replay_history at
 * the first event.  It runs as the calling role, each call cancelled after
 * timeout (NULL: none), in parallelism segments by aggregate.  Release
 * 1.0's function has the first six arguments.
 */
PG_FUNCTION_INFO_V1(es_register_handler);
Datum
es_register_handler(PG_FUNCTION_ARGS)
{
	char	   *name = handler_name(fcinfo, 0);
	HandlerSettings h;
	EsCall		call;

	memset(&h, 0, sizeof(h));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("function must not be null")));
	h.function = PG_GETARG_OID(1);
	h.event_types = PG_ARGISNULL(2) ? (Datum) 0 : PG_GETARG_DATUM(2);
	h.max_retries = PG_ARGISNULL(3) ? 3 : PG_GETARG_INT32(3);
	h.backoff = PG_ARGISNULL(4) ? NULL : PG_GETARG_INTERVAL_P(4);
	h.replay = !PG_ARGISNULL(5) && PG_GETARG_BOOL(5);
	h.catalog_1_1 = PG_NARGS() >= 8;
	h.parallelism = 1;
	if (h.catalog_1_1)
	{
		h.timeout = PG_ARGISNULL(6) ? NULL : PG_GETARG_INTERVAL_P(6);
		h.parallelism = PG_ARGISNULL(7) ? 1 : PG_GETARG_INT32(7);
	}
	es_check_retry_policy(h.max_retries, h.backoff);
	es_check_timeout(h.timeout);
	if (h.parallelism < 1 || h.parallelism > MAX_PARALLELISM)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("parallelism must be between 1 and %d", MAX_PARALLELISM),
				 errdetail("It is the number of segments, by aggregate, the handler's events are split into.")));

	es_call_begin(fcinfo, &call);
	if (h.event_types != (Datum) 0)
		es_check_event_type_filter(DatumGetArrayTypeP(h.event_types));
	es_check_consumer_name_free(name, "handler");
	(void) handler_lock(name);
	handler_register(&call, name, &h);
	es_call_end(&call);
	PG_RETURN_VOID();
}

static EsPlan unregister_plan = {
	"DELETE FROM @extschema@.es_consumers WHERE name OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}
};

/*
 * es_unregister_handler(name) returns void
 *
 * Removes a handler with its checkpoint, idempotency records and dead
 * letters (a built-in handler's tables stay).
 */
PG_FUNCTION_INFO_V1(es_unregister_handler);
Datum
es_unregister_handler(PG_FUNCTION_ARGS)
{
	char	   *name = handler_name(fcinfo, 0);
	EsCall		call;
	Datum		arg;

	es_call_begin(fcinfo, &call);
	handler_must_exist(name);
	arg = CStringGetTextDatum(name);
	if (SPI_execute_plan(es_plan(&unregister_plan), &arg, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not remove handler \"%s\"", name);
	es_call_end(&call);
	PG_RETURN_VOID();
}

static EsPlan pause_plan = {
	"UPDATE @extschema@.es_consumers SET paused = $2 WHERE name OPERATOR(pg_catalog.=) $1",
	2, {TEXTOID, BOOLOID}
};

/* Release 1.1's catalog: the segments of a split handler move too, and its old ones go. */
static EsPlan catch_up_1_1_plan = {
	"WITH s AS ("
	"  UPDATE @extschema@.es_consumer_segments s"
	"     SET checkpoint_tx = $2, checkpoint_position = 0, retry_event_id = NULL, retry_attempts = 0,"
	"         retry_first_failed_at = NULL, retry_at = NULL"
	"    FROM @extschema@.es_consumers c"
	"   WHERE c.name OPERATOR(pg_catalog.=) $1 AND s.consumer OPERATOR(pg_catalog.=) c.name"
	"     AND s.generation OPERATOR(pg_catalog.=) c.generation"
	"     AND ROW(s.checkpoint_tx, s.checkpoint_position) OPERATOR(pg_catalog.<) ROW($2, 0::pg_catalog.int8)),"
	" f AS ("
	"  DELETE FROM @extschema@.es_consumer_segments s USING @extschema@.es_consumers c"
	"   WHERE c.name OPERATOR(pg_catalog.=) $1 AND s.consumer OPERATOR(pg_catalog.=) c.name"
	"     AND s.generation OPERATOR(pg_catalog.<) c.generation"
	"     AND (s.log_skip_until IS NULL OR s.log_skip_until OPERATOR(pg_catalog.<) $2))"
	" UPDATE @extschema@.es_consumers"
	"   SET checkpoint_tx = $2, checkpoint_position = 0,"
	"       retry_event_id = NULL, retry_attempts = 0, retry_first_failed_at = NULL, retry_at = NULL"
	" WHERE name OPERATOR(pg_catalog.=) $1"
	"   AND ROW(checkpoint_tx, checkpoint_position) OPERATOR(pg_catalog.<) ROW($2, 0::pg_catalog.int8)",
	2, {TEXTOID, XID8OID}
};

static EsPlan catch_up_plan = {
	"UPDATE @extschema@.es_consumers"
	"   SET checkpoint_tx = $2, checkpoint_position = 0,"
	"       retry_event_id = NULL, retry_attempts = 0, retry_first_failed_at = NULL, retry_at = NULL"
	" WHERE name OPERATOR(pg_catalog.=) $1"
	"   AND ROW(checkpoint_tx, checkpoint_position) OPERATOR(pg_catalog.<) ROW($2, 0::pg_catalog.int8)",
	2, {TEXTOID, XID8OID}
};

/*
 * es_pause_handler(name) returns void
 *
 * Stops delivering events to a handler; its checkpoint stays.  A built-in
 * handler that was never switched on is off already.
 */
PG_FUNCTION_INFO_V1(es_pause_handler);
Datum
es_pause_handler(PG_FUNCTION_ARGS)
{
	char	   *name = handler_name(fcinfo, 0);
	EsCall		call;
	Datum		args[2];

	es_call_begin(fcinfo, &call);
	if (!handler_lock(name))
	{
		Datum		arg = CStringGetTextDatum(name);

		if (SPI_execute_plan(es_plan(&builtin_plan), &arg, NULL, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not look up built-in handler \"%s\"", name);
		if (SPI_processed == 0)
			handler_not_found(name);
	}
	args[0] = CStringGetTextDatum(name);
	args[1] = BoolGetDatum(true);
	if (SPI_execute_plan(es_plan(&pause_plan), args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not pause handler \"%s\"", name);
	es_call_end(&call);
	PG_RETURN_VOID();
}

/*
 * es_resume_handler(name, from_now) returns void
 *
 * Delivers events to a paused handler again, from its checkpoint, or with
 * from_now from the current commit horizon (skipping what happened while it
 * was paused).  A built-in handler not registered yet is registered, from
 * the present, to run as the caller.  es_resume_handler_1_1 is the same
 * for release 1.1's catalog (split handlers).
 */
static Datum
handler_resume(FunctionCallInfo fcinfo, bool catalog_1_1)
{
	char	   *name = handler_name(fcinfo, 0);
	bool		from_now = !PG_ARGISNULL(1) && PG_GETARG_BOOL(1);
	EsCall		call;
	Datum		args[2];

	if (from_now)
		es_require_read_committed("es_resume_handler with from_now",
								  "It moves the handler to the commit horizon of now; a transaction snapshot's horizon can be older, and the fences of a split handler below it would go while it still has events above them to deliver.");
	es_call_begin(fcinfo, &call);
	if (!handler_lock(name) && !handler_switch_on_builtin(&call, name, catalog_1_1))
		handler_not_found(name);
	args[0] = CStringGetTextDatum(name);
	args[1] = BoolGetDatum(false);
	if (SPI_execute_plan(es_plan(&pause_plan), args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not resume handler \"%s\"", name);
	if (from_now)
	{
		args[1] = FullTransactionIdGetDatum(es_commit_horizon_now());
		if (SPI_execute_plan(es_plan(catalog_1_1 ? &catch_up_1_1_plan : &catch_up_plan), args, NULL, false, 0)
			!= SPI_OK_UPDATE)
			elog(ERROR, "could not move handler \"%s\" to the present", name);
	}
	es_worker_wake_at_commit();
	es_call_end(&call);
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(es_resume_handler);
Datum
es_resume_handler(PG_FUNCTION_ARGS)
{
	return handler_resume(fcinfo, false);
}

PG_FUNCTION_INFO_V1(es_resume_handler_1_1);
Datum
es_resume_handler_1_1(PG_FUNCTION_ARGS)
{
	return handler_resume(fcinfo, true);
}

static EsPlan retry_one_plan = {
	"UPDATE @extschema@.es_dead_letters SET status = 'retrying'"
	" WHERE id OPERATOR(pg_catalog.=) $1 AND status OPERATOR(pg_catalog.=) 'dead'",
	1, {INT8OID}
};

static EsPlan status_plan = {
	"SELECT status, parked_behind FROM @extschema@.es_dead_letters WHERE id OPERATOR(pg_catalog.=) $1",
	1, {INT8OID}
};

/*
 * es_retry_dead_letter(id) returns void
 *
 * Marks a dead letter for delivery again; the worker delivers it, and then
 * the events parked behind it, in order.  A parked or resolved letter is an
 * error that says what to do instead.
 */
PG_FUNCTION_INFO_V1(es_retry_dead_letter);
Datum
es_retry_dead_letter(PG_FUNCTION_ARGS)
{
	EsCall		call;
	Datum		arg;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("id must not be null")));
	es_call_begin(fcinfo, &call);
	arg = PG_GETARG_DATUM(0);
	if (SPI_execute_plan(es_plan(&retry_one_plan), &arg, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not retry dead letter %lld", (long long) PG_GETARG_INT64(0));
	if (SPI_processed == 0)
	{
		bool		isnull;
		char	   *status;

		if (SPI_execute_plan(es_plan(&status_plan), &arg, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read dead letter %lld", (long long) PG_GETARG_INT64(0));
		if (SPI_processed == 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("dead letter %lld does not exist", (long long) PG_GETARG_INT64(0))));
		status = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		if (strcmp(status, "parked") == 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("dead letter %lld is parked behind dead letter %lld",
							(long long) PG_GETARG_INT64(0),
							(long long) DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull))),
					 errdetail("An event parked behind an earlier one of its aggregate is delivered after it."),
					 errhint("Retry the dead letter it is parked behind.")));
		if (strcmp(status, "resolved") == 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("dead letter %lld is resolved already", (long long) PG_GETARG_INT64(0))));
		/* retrying already: nothing to do */
	}
	es_worker_wake_at_commit();
	es_call_end(&call);
	PG_RETURN_VOID();
}

static EsPlan retry_all_plan = {
	"UPDATE @extschema@.es_dead_letters SET status = 'retrying'"
	" WHERE consumer OPERATOR(pg_catalog.=) $1 AND status OPERATOR(pg_catalog.=) 'dead'",
	1, {TEXTOID}
};

/*
 * es_retry_dead_letters(handler) returns bigint
 *
 * Marks every dead letter of a handler for delivery again; returns how many.
 */
PG_FUNCTION_INFO_V1(es_retry_dead_letters);
Datum
es_retry_dead_letters(PG_FUNCTION_ARGS)
{
	char	   *name = handler_name(fcinfo, 0);
	EsCall		call;
	Datum		arg;
	uint64		n;

	es_call_begin(fcinfo, &call);
	handler_must_exist(name);
	arg = CStringGetTextDatum(name);
	if (SPI_execute_plan(es_plan(&retry_all_plan), &arg, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not retry the dead letters of handler \"%s\"", name);
	n = SPI_processed;
	es_worker_wake_at_commit();
	es_call_end(&call);
	PG_RETURN_INT64((int64) n);
}
