/*-------------------------------------------------------------------------
 *
 * projection_rebuild.c
 *	  What builds a projection's rows from the store: the SQL functions
 *	  that register a projection (building it from the first event),
 *	  rebuild it, and unregister it; and the replay of stored events they
 *	  share.  How a projection is called, and the inline path of appends,
 *	  are in projection.c.
 *
 * Locking: see projection.c.  Whatever adds, removes or changes an inline
 * projection takes ShareLock on es_events first; a rebuild of all of an
 * inline projection's rows takes its lock in ExclusiveLock, a rebuild of
 * one aggregate that aggregate's lock; an async projection's rebuild locks
 * its consumer row.
 *
 * A rebuild runs in one transaction, as READ COMMITTED: it deletes the rows
 * and folds the events again; readers see the old rows until it commits,
 * then the new ones, never a half-built model.
 *
 * Needs SPI, as the store's owner (es_call_begin).
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "delivery/projection_internal.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"
#include "utils/xid8.h"

#include "core/horizon.h"
#include "core/validate.h"
#include "delivery/consumer.h"
#include "delivery/worker.h"
#include "read/read.h"
#include "write/aggregate.h"

/*-------------------------------------------------------------------------
 * Replaying events: registrations and rebuilds
 *-------------------------------------------------------------------------
 */

static EsPlan replay_plan = {
	"SELECT e.* FROM @extschema@.es_events e"
	" WHERE ($1::pg_catalog.text[] IS NULL OR e.event_type OPERATOR(pg_catalog.=) ANY ($1))"
	"   AND ($2::pg_catalog.text IS NULL OR e.aggregate_id OPERATOR(pg_catalog.=) $2)"
	"   AND ROW(e.tx_id, e.position) OPERATOR(pg_catalog.<=) ROW($3, $4)"
	" ORDER BY e.tx_id, e.position",
	4, {TEXTARRAYOID, TEXTOID, XID8OID, INT8OID}
};

typedef struct Replay
{
	Projection *projection;
	TupleDesc	desc;
	MemoryContext event_cxt;
	int64		events;
} Replay;

static void
replay_event(Datum *values, bool *nulls, void *arg)
{
	Replay	   *r = (Replay *) arg;
	MemoryContext old = MemoryContextSwitchTo(r->event_cxt);
	HeapTuple	tuple = heap_form_tuple(r->desc, values, nulls);

	es_projection_call(r->projection, &r->projection->flinfo, heap_copy_tuple_as_datum(tuple, r->desc), false);
	r->events++;
	MemoryContextSwitchTo(old);
	MemoryContextReset(r->event_cxt);
}

/* Delete p's rows of one aggregate (or all, NULL), when p can. */
static void
projection_reset(Projection *p, const char *aggregate_id)
{
	FmgrInfo	reset;

	if (p->model != NULL)
	{
		es_read_model_reset(p->model, aggregate_id);
		return;
	}
	if (!OidIsValid(p->reset_function))
		return;
	fmgr_info(p->reset_function, &reset);
	es_projection_call(p, &reset, aggregate_id ? CStringGetTextDatum(aggregate_id) : (Datum) 0,
					   aggregate_id == NULL);
}

/*
 * Reset p's rows of one aggregate (or all, NULL) and fold its events again,
 * up to (bound_tx, bound_position) in commit order.  Returns the number of
 * events replayed.  The caller holds the locks.
 */
static int64
projection_replay(EsStore *s, Projection *p, const char *aggregate_id, FullTransactionId bound_tx,
				  int64 bound_position)
{
	Replay		r;
	Datum		args[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};

	projection_reset(p, aggregate_id);
	if (p->model != NULL)
		return es_read_model_rebuild(p->model, p->event_types, aggregate_id, bound_tx, bound_position);

	memset(&r, 0, sizeof(r));
	r.projection = p;
	r.desc = lookup_rowtype_tupdesc_copy(s->events_rowtype, -1);
	r.event_cxt = AllocSetContextCreate(CurrentMemoryContext, "ultracore_es replayed event",
										ALLOCSET_DEFAULT_SIZES);
	args[0] = p->event_types ? PointerGetDatum(p->event_types) : (Datum) 0;
	nulls[0] = p->event_types ? ' ' : 'n';
	args[1] = aggregate_id ? CStringGetTextDatum(aggregate_id) : (Datum) 0;
	nulls[1] = aggregate_id ? ' ' : 'n';
	args[2] = FullTransactionIdGetDatum(bound_tx);
	args[3] = Int64GetDatum(bound_position);
	es_read_rows(&replay_plan, args, nulls, false, true, NULL, replay_event, &r);
	MemoryContextDelete(r.event_cxt);
	return r.events;
}

/* Every event: the highest commit-order bound. */
static FullTransactionId
bound_all(void)
{
	return FullTransactionIdFromU64(PG_UINT64_MAX);
}

/*
 * A fresh snapshot, taken once the locks are held: under READ COMMITTED the
 * next statement would see as much.
 */
static void
push_fresh_snapshot(void)
{
	PushActiveSnapshot(GetTransactionSnapshot());
}

/* Why a rebuild needs READ COMMITTED. */
#define FOLDS_COMMITTED \
	"It folds the events committed once it holds its locks, which a transaction snapshot taken earlier would not show."

static bool
can_reset(const Projection *p)
{
	return p->model != NULL || OidIsValid(p->reset_function);
}

/*-------------------------------------------------------------------------
 * SQL functions
 *-------------------------------------------------------------------------
 */

static EsPlan builtin_plan = {
	"SELECT function, event_types FROM @extschema@.es_builtin_projections WHERE name OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}
};

static EsPlan save_projection_plan = {
	"INSERT INTO @extschema@.es_projections"
	" (name, function, event_types, mode, reset_function, max_retries, backoff, run_as)"
	" VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
	" ON CONFLICT (name) DO UPDATE"
	"    SET function = excluded.function, event_types = excluded.event_types, mode = excluded.mode,"
	"        reset_function = COALESCE(excluded.reset_function, es_projections.reset_function),"
	"        max_retries = excluded.max_retries,"
	"        backoff = excluded.backoff, run_as = excluded.run_as",
	8, {TEXTOID, REGPROCEDUREOID, TEXTARRAYOID, TEXTOID, REGPROCEDUREOID, INT4OID, INTERVALOID, REGROLEOID}
};

/* Release 1.1's catalog: with the timeout of an async projection's calls. */
static EsPlan save_projection_1_1_plan = {
	"INSERT INTO @extschema@.es_projections"
	" (name, function, event_types, mode, reset_function, max_retries, backoff, run_as, timeout)"
	" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
	" ON CONFLICT (name) DO UPDATE"
	"    SET function = excluded.function, event_types = excluded.event_types, mode = excluded.mode,"
	"        reset_function = COALESCE(excluded.reset_function, es_projections.reset_function),"
	"        max_retries = excluded.max_retries,"
	"        backoff = excluded.backoff, run_as = excluded.run_as, timeout = excluded.timeout",
	9, {TEXTOID, REGPROCEDUREOID, TEXTARRAYOID, TEXTOID, REGPROCEDUREOID, INT4OID, INTERVALOID, REGROLEOID,
	INTERVALOID}
};

/* The consumer of an async projection, starting at the first event. */
static EsPlan start_consumer_plan = {
	"INSERT INTO @extschema@.es_consumers (name, kind, checkpoint_tx, checkpoint_position)"
	" VALUES ($1, 'projection', '0', 0)"
	" ON CONFLICT (name) DO UPDATE"
	"    SET checkpoint_tx = '0', checkpoint_position = 0, retry_event_id = NULL, retry_attempts = 0,"
	"        retry_first_failed_at = NULL, retry_at = NULL, last_error = NULL, last_error_at = NULL",
	1, {TEXTOID}
};

/*
 * A consumer started again or moved forgets where it was in the commit log
 * (1.1; a 1.0 catalog, served by this library until its update, has no
 * commit log and no such columns).
 */
static EsPlan forget_log_plan = {
	"UPDATE @extschema@.es_consumers"
	"   SET log_seq = NULL, log_position = NULL, log_skip = NULL, log_skip_until = NULL"
	" WHERE name OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}
};

static void
consumer_forget_log(Datum name)
{
	if (OidIsValid(es_store_resolved()->commit_log_relid) &&
		SPI_execute_plan(es_plan(&forget_log_plan), &name, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not reset the consumer \"%s\"", TextDatumGetCString(name));
}

/* Starting over: its ledger and dead letters are history. */
static EsPlan forget_consumer_plan = {
	"WITH l AS (DELETE FROM @extschema@.es_handled WHERE consumer OPERATOR(pg_catalog.=) $1)"
	" DELETE FROM @extschema@.es_dead_letters WHERE consumer OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}
};

static EsPlan drop_consumer_plan = {
	"DELETE FROM @extschema@.es_consumers"
	" WHERE name OPERATOR(pg_catalog.=) $1 AND kind OPERATOR(pg_catalog.=) 'projection'",
	1, {TEXTOID}
};

static EsPlan lock_consumer_plan = {
	"SELECT checkpoint_tx, checkpoint_position FROM @extschema@.es_consumers"
	" WHERE name OPERATOR(pg_catalog.=) $1 FOR UPDATE",
	1, {TEXTOID}
};

/* A reset function takes the aggregate's id (NULL: every aggregate). */
static void
check_reset_function(Oid fn, Oid caller)
{
	HeapTuple	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	bool		ok;

	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function with OID %u does not exist", fn)));
	ok = ((Form_pg_proc) GETSTRUCT(tup))->prokind == PROKIND_FUNCTION &&
		((Form_pg_proc) GETSTRUCT(tup))->pronargs == 1 &&
		((Form_pg_proc) GETSTRUCT(tup))->proargtypes.values[0] == TEXTOID &&
		!((Form_pg_proc) GETSTRUCT(tup))->proisstrict;
	ReleaseSysCache(tup);
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("function %s cannot reset a projection", format_procedure(fn)),
				 errdetail("A reset function takes one argument of type text, the aggregate's id, NULL for all, and is not STRICT.")));
	if (pg_proc_aclcheck(fn, caller, ACL_EXECUTE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for function %s", format_procedure(fn)),
				 errdetail("A projection runs as the role that registers it.")));
}

/* Whether event_types (NULL: all) is the same set as p's. */
static bool
same_types(const Projection *p, ArrayType *event_types)
{
	Datum	   *elems;
	int			n;
	int			i;

	if (p->event_types == NULL || event_types == NULL)
		return p->event_types == NULL && event_types == NULL;
	deconstruct_array(event_types, TEXTOID, -1, false, TYPALIGN_INT, &elems, NULL, &n);
	for (i = 0; i < n; i++)
		if (!es_projection_takes(p, TextDatumGetCString(elems[i])))
			return false;
	for (i = 0; i < p->ntypes; i++)
	{
		int			j;

		for (j = 0; j < n; j++)
			if (strcmp(p->types[i], TextDatumGetCString(elems[j])) == 0)
				break;
		if (j == n)
			return false;
	}
	return true;
}

/* Record a rebuild's duration and size on the projection's row. */
static EsPlan rebuilt_plan = {
	"UPDATE @extschema@.es_projections"
	"   SET last_rebuild_at = pg_catalog.statement_timestamp(),"
	"       last_rebuild_duration = pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) $2,"
	"       last_rebuild_events = $3"
	" WHERE name OPERATOR(pg_catalog.=) $1",
	3, {TEXTOID, TIMESTAMPTZOID, INT8OID}
};

static void
record_rebuild(const char *name, TimestampTz started, int64 events)
{
	Datum		args[3];

	args[0] = CStringGetTextDatum(name);
	args[1] = TimestampTzGetDatum(started);
	args[2] = Int64GetDatum(events);
	if (SPI_execute_plan(es_plan(&rebuilt_plan), args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not record the rebuild of projection \"%s\"", name);
}

/*
 * es_register_projection(name, function, event_types, mode, reset_function,
 *						  max_retries, backoff) returns void
 *
 * Registers a projection and builds it from the first event: inline ones
 * at once, in this transaction; async ones by the worker, which starts at
 * the first event.  function NULL: the built-in projection called name.
 * Registering again with only other retries, backoff or reset function
 * changes just those; with another function, event types or mode, the rows
 * are reset and built again, which needs a way to reset them.
 */
PG_FUNCTION_INFO_V1(es_register_projection);
Datum
es_register_projection(PG_FUNCTION_ARGS)
{
	char	   *name = es_arg_consumer_name(fcinfo, 0, "projection name");
	Oid			function = PG_ARGISNULL(1) ? InvalidOid : PG_GETARG_OID(1);
	ArrayType  *event_types = PG_ARGISNULL(2) ? NULL : PG_GETARG_ARRAYTYPE_P(2);
	char	   *mode = PG_ARGISNULL(3) ? "async" : text_to_cstring(PG_GETARG_TEXT_PP(3));
	Oid			reset_function = PG_ARGISNULL(4) ? InvalidOid : PG_GETARG_OID(4);
	int32		max_retries = PG_ARGISNULL(5) ? 3 : PG_GETARG_INT32(5);
	Interval   *backoff = PG_ARGISNULL(6) ? NULL : PG_GETARG_INTERVAL_P(6);
	bool		catalog_1_1 = PG_NARGS() >= 8;	/* release 1.0's function has 7 arguments */
	Interval   *timeout = catalog_1_1 && !PG_ARGISNULL(7) ? PG_GETARG_INTERVAL_P(7) : NULL;
	EsCall		call;
	Projection	old;
	Projection	now;
	bool		existed;
	bool		builtin = false;
	bool		unchanged;
	Datum		arg;
	Datum		args[9];
	char		nulls[9] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};

	if (strcmp(mode, "inline") != 0 && strcmp(mode, "async") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid projection mode \"%s\"", mode),
				 errhint("A projection is \"inline\" (in the append's transaction) or \"async\" (by the background worker).")));
	es_check_retry_policy(max_retries, backoff);
	es_check_timeout(timeout);
	es_require_read_committed("es_register_projection", FOLDS_COMMITTED);

	es_call_begin(fcinfo, &call);
	es_check_consumer_name_free(name, "projection");
	arg = CStringGetTextDatum(name);
	if (SPI_execute_plan(es_plan(&builtin_plan), &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up built-in projection \"%s\"", name);
	if (SPI_processed > 0)
	{
		bool		isnull;
		Oid			builtin_function = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0],
																	  SPI_tuptable->tupdesc, 1, &isnull));

		if (!OidIsValid(function) || function == builtin_function)
		{
			builtin = true;
			function = builtin_function;
			if (event_types == NULL)
				event_types = DatumGetArrayTypePCopy(SPI_getbinval(SPI_tuptable->vals[0],
																   SPI_tuptable->tupdesc, 2, &isnull));
		}
	}
	if (!OidIsValid(function))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("function must not be null"),
				 errhint("Name a function(event es_events), or one of the built-in projections es_customers, es_accounts, es_transactions, es_payments and es_loans.")));
	if (!builtin)
		es_check_consumer_function(function, call.store, call.caller, "projection");
	if (OidIsValid(reset_function))
		check_reset_function(reset_function, call.caller);
	if (event_types != NULL)
		es_check_event_type_filter(event_types);

	existed = es_projection_lock(name, &old);
	unchanged = existed && old.function == function && same_types(&old, event_types) &&
		old.inline_mode == (strcmp(mode, "inline") == 0);
	if (existed && !unchanged && !builtin && !OidIsValid(reset_function) && !can_reset(&old))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("projection \"%s\" is registered with another function, event types or mode", name),
				 errdetail("Its rows would have to be built again, and it has no reset function to delete them first."),
				 errhint("Register it with a reset_function, or unregister it first.")));

	/* Inline projections change under ShareLock on es_events (see the top of projection.c). */
	if ((existed && old.inline_mode) || strcmp(mode, "inline") == 0)
		LockRelationOid(call.store->events_relid, ShareLock);

	args[0] = arg;
	args[1] = ObjectIdGetDatum(function);
	args[2] = PointerGetDatum(event_types);
	nulls[2] = event_types ? ' ' : 'n';
	args[3] = CStringGetTextDatum(mode);
	args[4] = ObjectIdGetDatum(reset_function);
	nulls[4] = OidIsValid(reset_function) ? ' ' : 'n';
	args[5] = Int32GetDatum(max_retries);
	args[6] = backoff ? IntervalPGetDatum(backoff)
		: DirectFunctionCall3(interval_in, CStringGetDatum("1 second"), ObjectIdGetDatum(InvalidOid),
							  Int32GetDatum(-1));
	args[7] = ObjectIdGetDatum(call.caller);
	args[8] = timeout ? IntervalPGetDatum(timeout) : (Datum) 0;
	nulls[8] = timeout ? ' ' : 'n';
	if (SPI_execute_plan(es_plan(catalog_1_1 ? &save_projection_1_1_plan : &save_projection_plan), args, nulls,
						 false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not register projection \"%s\"", name);
	if (unchanged)
	{
		es_call_end(&call);
		PG_RETURN_VOID();
	}

	/* Build it from the first event. */
	es_projection_must_exist(name, &now);
	if (existed && !old.inline_mode)
	{
		if (SPI_execute_plan(es_plan(&lock_consumer_plan), &arg, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not lock the consumer of projection \"%s\"", name);
	}
	if (now.inline_mode)
	{
		TimestampTz started = GetCurrentTimestamp();
		int64		events;

		if (SPI_execute_plan(es_plan(&drop_consumer_plan), &arg, NULL, false, 0) != SPI_OK_DELETE)
			elog(ERROR, "could not drop the consumer of projection \"%s\"", name);
		push_fresh_snapshot();
		events = projection_replay(call.store, &now, NULL, bound_all(), PG_INT64_MAX);
		PopActiveSnapshot();
		record_rebuild(name, started, events);
	}
	else
	{
		projection_reset(&now, NULL);
		if (SPI_execute_plan(es_plan(&start_consumer_plan), &arg, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not start the consumer of projection \"%s\"", name);
		consumer_forget_log(arg);
		if (SPI_execute_plan(es_plan(&forget_consumer_plan), &arg, NULL, false, 0) != SPI_OK_DELETE)
			elog(ERROR, "could not reset the consumer of projection \"%s\"", name);
		es_worker_wake_at_commit();
	}
	es_call_end(&call);
	PG_RETURN_VOID();
}

static EsPlan unregister_plan = {
	"DELETE FROM @extschema@.es_projections WHERE name OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}
};

/*
 * es_unregister_projection(name) returns void
 *
 * Stops a projection; its rows stay, an async one's consumer (checkpoint,
 * ledger, dead letters) goes.
 */
PG_FUNCTION_INFO_V1(es_unregister_projection);
Datum
es_unregister_projection(PG_FUNCTION_ARGS)
{
	char	   *name = es_arg_consumer_name(fcinfo, 0, "projection name");
	EsCall		call;
	Projection	p;
	Datum		arg;

	es_call_begin(fcinfo, &call);
	es_projection_must_exist(name, &p);
	if (p.inline_mode)
		LockRelationOid(call.store->events_relid, ShareLock);
	arg = CStringGetTextDatum(name);
	if (SPI_execute_plan(es_plan(&drop_consumer_plan), &arg, NULL, false, 0) != SPI_OK_DELETE ||
		SPI_execute_plan(es_plan(&unregister_plan), &arg, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not unregister projection \"%s\"", name);
	es_call_end(&call);
	PG_RETURN_VOID();
}

static EsPlan rebuilt_consumer_plan = {
	"UPDATE @extschema@.es_consumers"
	"   SET checkpoint_tx = $2, checkpoint_position = $3, retry_event_id = NULL, retry_attempts = 0,"
	"       retry_first_failed_at = NULL, retry_at = NULL"
	" WHERE name OPERATOR(pg_catalog.=) $1",
	3, {TEXTOID, XID8OID, INT8OID}
};

/* The dead letters a rebuild applied: those up to its bound, of one aggregate or all. */
static EsPlan rebuilt_letters_plan = {
	"UPDATE @extschema@.es_dead_letters SET status = 'resolved', resolved_at = pg_catalog.now()"
	" WHERE consumer OPERATOR(pg_catalog.=) $1 AND status OPERATOR(pg_catalog.<>) 'resolved'"
	"   AND ($2::pg_catalog.text IS NULL OR aggregate_id OPERATOR(pg_catalog.=) $2)"
	"   AND ROW(tx_id, position) OPERATOR(pg_catalog.<=) ROW($3, $4)",
	4, {TEXTOID, TEXTOID, XID8OID, INT8OID}
};

/*
 * An async rebuild of every aggregate: the worker applies again everything
 * from the new checkpoint, over rows the reset emptied, so the consumer's
 * ledger goes (it would pass over the events it handled in the commit log
 * or above the horizon the rebuild took), and so do the dead letters of the
 * events it will deliver again (one parked behind a resolved letter would
 * hold its aggregate back for good).
 */
static EsPlan rebuilt_all_plan = {
	"WITH l AS (DELETE FROM @extschema@.es_handled WHERE consumer OPERATOR(pg_catalog.=) $1)"
	" DELETE FROM @extschema@.es_dead_letters"
	" WHERE consumer OPERATOR(pg_catalog.=) $1 AND status OPERATOR(pg_catalog.<>) 'resolved'"
	"   AND ROW(tx_id, position) OPERATOR(pg_catalog.>) ROW($2, $3)",
	3, {TEXTOID, XID8OID, INT8OID}
};

/*
 * An async rebuild of one aggregate replays all its events, the worker's
 * later ones included (under the aggregate's lock: no more can commit
 * meanwhile): those above the worker's checkpoint go into the ledger, so
 * that the worker passes over them.  A read model's rows need none: their
 * version is their ledger.
 */
static EsPlan rebuilt_ledger_plan = {
	"INSERT INTO @extschema@.es_handled (consumer, event_id, position)"
	" SELECT $1, e.event_id, e.position FROM @extschema@.es_events e"
	"  WHERE e.aggregate_id OPERATOR(pg_catalog.=) $2"
	"    AND ($5::pg_catalog.text[] IS NULL OR e.event_type OPERATOR(pg_catalog.=) ANY ($5))"
	"    AND ROW(e.tx_id, e.position) OPERATOR(pg_catalog.>) ROW($3, $4)"
	" ON CONFLICT DO NOTHING",
	5, {TEXTOID, TEXTOID, XID8OID, INT8OID, TEXTARRAYOID}
};

/*
 * es_rebuild_projection(name, aggregate_id) returns bigint
 *
 * Deletes the projection's rows of one aggregate (or all, NULL) and folds
 * the events again, in this transaction.  Inline, or async for one
 * aggregate: every committed event (async, the worker passes over those
 * when it gets there).  Async, all aggregates: the events below the commit
 * horizon, and the worker goes on from there.  The dead letters it applied
 * are resolved.  Returns the number of events replayed.
 */
PG_FUNCTION_INFO_V1(es_rebuild_projection);
Datum
es_rebuild_projection(PG_FUNCTION_ARGS)
{
	char	   *name = es_arg_consumer_name(fcinfo, 0, "projection name");
	char	   *aggregate_id = es_arg_id(fcinfo, 1, "aggregate_id", false);
	TimestampTz started = GetCurrentTimestamp();
	FullTransactionId bound_tx = bound_all();
	int64		bound_position = PG_INT64_MAX;
	FullTransactionId horizon = InvalidFullTransactionId;
	FullTransactionId checkpoint_tx = InvalidFullTransactionId;
	int64		checkpoint_position = 0;
	EsCall		call;
	Projection	p;
	Datum		arg;
	int64		events;

	es_require_read_committed("es_rebuild_projection", FOLDS_COMMITTED);
	es_call_begin(fcinfo, &call);
	es_projection_must_exist(name, &p);
	if (!can_reset(&p))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("projection \"%s\" cannot be rebuilt: it has no reset function", name),
				 errhint("Register it again with a reset_function(aggregate_id text) that deletes its rows.")));
	arg = CStringGetTextDatum(name);
	if (aggregate_id != NULL)
	{
		EsAggregateRow row;

		(void) es_aggregate_lock(call.store, aggregate_id, &row);
	}
	else if (p.inline_mode)
		LockDatabaseObject(call.store->projections_relid, (Oid) p.id, 0, ExclusiveLock);
	if (!p.inline_mode)
	{
		bool		isnull;

		if (SPI_execute_plan(es_plan(&lock_consumer_plan), &arg, NULL, false, 1) != SPI_OK_SELECT ||
			SPI_processed != 1)
			elog(ERROR, "could not lock the consumer of projection \"%s\"", name);
		checkpoint_tx = DatumGetFullTransactionId(SPI_getbinval(SPI_tuptable->vals[0],
																SPI_tuptable->tupdesc, 1, &isnull));
		checkpoint_position = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2,
														  &isnull));
	}
	push_fresh_snapshot();
	if (!p.inline_mode && aggregate_id == NULL)
	{
		/* Every event below the horizon: (horizon - 1, any position). */
		horizon = es_commit_horizon_of(GetActiveSnapshot());
		bound_tx = FullTransactionIdFromU64(U64FromFullTransactionId(horizon) - 1);
	}

	events = projection_replay(call.store, &p, aggregate_id, bound_tx, bound_position);
	PopActiveSnapshot();

	if (!p.inline_mode)
	{
		Datum		args[5];
		char		nulls[5] = {' ', ' ', ' ', ' ', ' '};

		args[0] = arg;
		if (aggregate_id == NULL)
		{
			args[1] = FullTransactionIdGetDatum(horizon);
			args[2] = Int64GetDatum(0);
			if (SPI_execute_plan(es_plan(&rebuilt_consumer_plan), args, NULL, false, 0) != SPI_OK_UPDATE)
				elog(ERROR, "could not move the consumer of projection \"%s\"", name);
			consumer_forget_log(arg);
			if (SPI_execute_plan(es_plan(&rebuilt_all_plan), args, NULL, false, 0) != SPI_OK_DELETE)
				elog(ERROR, "could not reset the consumer of projection \"%s\"", name);
		}
		else if (p.model == NULL)
		{
			args[1] = CStringGetTextDatum(aggregate_id);
			args[2] = FullTransactionIdGetDatum(checkpoint_tx);
			args[3] = Int64GetDatum(checkpoint_position);
			args[4] = p.event_types ? PointerGetDatum(p.event_types) : (Datum) 0;
			nulls[4] = p.event_types ? ' ' : 'n';
			if (SPI_execute_plan(es_plan(&rebuilt_ledger_plan), args, nulls, false, 0) != SPI_OK_INSERT)
				elog(ERROR, "could not record the rebuild of projection \"%s\"", name);
		}
		args[1] = aggregate_id ? CStringGetTextDatum(aggregate_id) : (Datum) 0;
		nulls[1] = aggregate_id ? ' ' : 'n';
		args[2] = FullTransactionIdGetDatum(bound_tx);
		args[3] = Int64GetDatum(bound_position);
		if (SPI_execute_plan(es_plan(&rebuilt_letters_plan), args, nulls, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not resolve the dead letters of projection \"%s\"", name);
		es_worker_wake_at_commit();
	}
	record_rebuild(name, started, events);
	es_call_end(&call);
	PG_RETURN_INT64(events);
}
