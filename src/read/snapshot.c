/*-------------------------------------------------------------------------
 *
 * snapshot.c
 *	  Snapshots of aggregate states: saved by hand, taken automatically by
 *	  the appends that reach a multiple of the aggregate type's policy,
 *	  read, deleted and rebuilt.
 *
 * Automatic snapshots are taken inline, in the append's transaction, right
 * after its events are inserted and while the aggregate's lock is held: the
 * snapshot is exactly the fold of the events up to its version, it commits or
 * rolls back with them, and no background process is needed.  The cost, a
 * fold of at most N events from the previous snapshot, falls on one append
 * in N.
 *
 * Every snapshot records the reducer and the fingerprint of what made it
 * (aggregate_type.c); loads use only snapshots with the current fingerprint.
 * A state given by hand is saved only when it equals the fold of the
 * events, so that no load can return a state the events do not give.
 *
 * Needs an SPI connection (es_call_begin).
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "read/snapshot.h"

#include "catalog/pg_type.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"

#include "core/event.h"
#include "core/store.h"
#include "core/validate.h"
#include "privacy/personal_data.h"
#include "read/aggregate_type.h"
#include "read/load.h"
#include "write/append.h"

#define SAVE_CONFLICT \
	" ON CONFLICT (aggregate_id, version) DO UPDATE" \
	"    SET aggregate_type = excluded.aggregate_type, state = excluded.state," \
	"        reducer = excluded.reducer, fingerprint = excluded.fingerprint," \
	"        automatic = excluded.automatic, taken_at = excluded.taken_at, taken_by = excluded.taken_by"

/* A 1.0 catalog's snapshots have no subjects: its plan. */
static EsPlan save_1_0_plan = {
	"INSERT INTO @extschema@.es_snapshots"
	" (aggregate_id, version, aggregate_type, state, reducer, fingerprint, automatic, taken_at, taken_by)"
	" VALUES ($1, $2, $3, $4, $5, $6, $7, pg_catalog.clock_timestamp(), $8)"
	SAVE_CONFLICT,
	8, {TEXTOID, INT8OID, TEXTOID, JSONBOID, TEXTOID, TEXTOID, BOOLOID, TEXTOID}
};

static EsPlan save_plan = {
	"INSERT INTO @extschema@.es_snapshots"
	" (aggregate_id, version, aggregate_type, state, reducer, fingerprint, automatic, taken_at, taken_by, subjects)"
	" VALUES ($1, $2, $3, $4, $5, $6, $7, pg_catalog.clock_timestamp(), $8, $9)"
	SAVE_CONFLICT ", subjects = excluded.subjects",
	9, {TEXTOID, INT8OID, TEXTOID, JSONBOID, TEXTOID, TEXTOID, BOOLOID, TEXTOID, TEXTARRAYOID}
};

/*
 * Store (or replace) the snapshot of aggregate_id at version.  A state
 * folded from personal data (of subjects) is stored sealed with their
 * keys; when one was forgotten meanwhile, not at all.
 */
static void
snapshot_save(EsStore *s, const char *aggregate_id, int64 version, const char *aggregate_type, Jsonb *state,
			  List *subjects, bool automatic, const char *taken_by)
{
	Datum		args[9];
	char		nulls[9] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', 'n'};

	if (subjects != NIL)
	{
		Datum	   *elems = palloc(sizeof(Datum) * list_length(subjects));
		ListCell   *lc;
		int			n = 0;

		if ((state = es_personal_seal_state(s, state, subjects)) == NULL)
			return;
		foreach(lc, subjects)
			elems[n++] = CStringGetTextDatum((const char *) lfirst(lc));
		args[8] = PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT));
		nulls[8] = ' ';
	}
	args[0] = CStringGetTextDatum(aggregate_id);
	args[1] = Int64GetDatum(version);
	args[2] = CStringGetTextDatum(aggregate_type);
	args[3] = JsonbPGetDatum(state);
	args[4] = CStringGetTextDatum(es_aggregate_type_reducer(aggregate_type)->reducer_name);
	args[5] = CStringGetTextDatum(es_aggregate_type_fingerprint(aggregate_type));
	args[6] = BoolGetDatum(automatic);
	args[7] = CStringGetTextDatum(taken_by);
	if (SPI_execute_plan(es_plan(OidIsValid(s->personal_data_relid) ? &save_plan : &save_1_0_plan),
						 args, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not save the snapshot of aggregate \"%s\"", aggregate_id);
}

/*
 * Fold the state of aggregate_id at version (seeing the current command's
 * own appends) and save it as a snapshot.
 */
static void
snapshot_take(EsStore *s, const char *aggregate_id, int64 version, bool automatic,
			  const char *taken_by)
{
	EsAggregateState st;

	es_load_state(s, aggregate_id, version, NULL, false, true, &st);
	snapshot_save(s, aggregate_id, st.version, st.aggregate_type, st.state, st.subjects, automatic, taken_by);
}

/* A JSON value for an error's detail, cut at 1000 characters. */
static char *
snapshot_shown(Jsonb *state)
{
	char	   *text = JsonbToCString(NULL, &state->root, VARSIZE(state));

	if (strlen(text) > 1000)
		return psprintf("%.*s... (%zu bytes)", pg_mbcliplen(text, strlen(text), 1000), text, strlen(text));
	return text;
}

/*
 * A state given by hand is saved only when it is the fold of the events
 * up to version (every event folded, no snapshot trusted): a load never
 * returns a state the events do not give.
 */
static void
snapshot_save_given(EsStore *s, const char *aggregate_id, int64 version, Jsonb *given,
					const char *taken_by)
{
	EsAggregateState st;

	es_load_state(s, aggregate_id, version, NULL, false, false, &st);
	/*
	 * The fold is shown unless it holds personal data: an error's text
	 * stays in the server log, which forgetting a subject does not reach.
	 */
	if (st.state == NULL ||
		DatumGetInt32(DirectFunctionCall2(jsonb_cmp, JsonbPGetDatum(st.state), JsonbPGetDatum(given))) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("state is not the state of aggregate \"%s\" at version %lld", aggregate_id,
						(long long) version),
				 st.subjects != NIL
				 ? errdetail("The events fold to another state, not shown: it holds personal data.")
				 : errdetail("The events fold to %s; the state given is %s.",
							 st.state ? snapshot_shown(st.state) : "nothing", snapshot_shown(given)),
				 errhint("Omit the state to have it folded from the events, or register the reducer that gives it (es_register_reducer).")));
	snapshot_save(s, aggregate_id, st.version, st.aggregate_type, st.state, st.subjects, false, taken_by);
}

/*
 * The write path stored the events of an append (versions base + 1 and
 * on).  When the aggregate type has a policy of every N events and the
 * append reached one or more multiples of N, snapshot the aggregate at
 * each, on behalf of the appending role.
 */
static void
snapshot_after_append(EsStore *s, const EsAppendRequest *req, int64 base, TupleDesc desc,
					  HeapTuple *rows)
{
	int32		every = es_aggregate_type_snapshot_every(req->aggregate_type);
	int64		at;

	if (every <= 0)
		return;
	for (at = (base / every + 1) * every; at <= base + req->nevents; at += every)
		snapshot_take(s, req->aggregate_id, at, true, req->appended_by);
}

static const EsAppendListener snapshot_listener = {
	.inserted = snapshot_after_append,
};

/* es_snapshot_init: from _PG_init; automatic snapshots listen to the write path. */
void
es_snapshot_init(void)
{
	es_append_listen(&snapshot_listener);
}

/*
 * The type and current version of an aggregate that must exist; an error
 * otherwise.  The type is palloc'd.
 */
static char *
snapshot_aggregate(const char *aggregate_id, int64 *current)
{
	char		type[ES_MAX_NAME_LEN + 1];

	if (!es_aggregate_head(aggregate_id, false, type, current))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("aggregate \"%s\" does not exist", aggregate_id)));
	return pstrdup(type);
}

/*
 * es_save_snapshot(aggregate_id, version, state, aggregate_type) returns bigint
 *
 * Saves the snapshot of an aggregate at version (default: its current
 * version), folded by the aggregate type's reducer.  A state given must be
 * that fold (the guide's create_snapshot(state), checked).
 * The version must exist, and aggregate_type, when given, must be the
 * aggregate's.  Returns the version.
 */
PG_FUNCTION_INFO_V1(es_save_snapshot);
Datum
es_save_snapshot(PG_FUNCTION_ARGS)
{
	char	   *aggregate_id = es_arg_id(fcinfo, 0, "aggregate_id", true);
	char	   *expected_type = es_arg_name(fcinfo, 3, "aggregate_type", false);
	char	   *taken_by = GetUserNameFromId(GetUserId(), false);
	int64		version;
	int64		current;
	char	   *type;
	EsCall		call;

	if (!PG_ARGISNULL(1) && PG_GETARG_INT64(1) < 1)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("version must be at least 1")));

	es_call_begin(fcinfo, &call);
	type = snapshot_aggregate(aggregate_id, &current);
	if (expected_type != NULL && strcmp(expected_type, type) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("aggregate \"%s\" is of type \"%s\", not \"%s\"", aggregate_id, type, expected_type)));
	version = PG_ARGISNULL(1) ? current : PG_GETARG_INT64(1);
	if (version > current || version < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("aggregate \"%s\" has no version %lld", aggregate_id, (long long) version),
				 errdetail("Its current version is %lld.", (long long) current)));
	if (PG_ARGISNULL(2))
		snapshot_take(call.store, aggregate_id, version, false, taken_by);
	else
		snapshot_save_given(call.store, aggregate_id, version, PG_GETARG_JSONB_P(2), taken_by);
	es_call_end(&call);
	PG_RETURN_INT64(version);
}

static EsPlan get_plan = {
	"SELECT s.* FROM @extschema@.es_snapshots s"
	" WHERE s.aggregate_id OPERATOR(pg_catalog.=) $1"
	"   AND s.version OPERATOR(pg_catalog.<=) $2"
	"   AND ($3 OR s.fingerprint OPERATOR(pg_catalog.=) $4)"
	" ORDER BY s.version DESC LIMIT 1",
	4, {TEXTOID, INT8OID, BOOLOID, TEXTOID}
};

/*
 * es_read_rows is for events; snapshots are few and small: copy directly,
 * a sealed state revealed (NULL once a subject of it was forgotten).
 */
static void
snapshot_put_rows(EsStore *s, ReturnSetInfo *rsinfo)
{
	TupleDesc	desc = SPI_tuptable->tupdesc;
	int			state_att = SPI_fnumber(desc, "state");
	int			subjects_att = SPI_fnumber(desc, "subjects");
	uint64		i;

	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		bool		isnull;
		Datum		subjects = subjects_att > 0 ? SPI_getbinval(row, desc, subjects_att, &isnull) : (Datum) 0;

		if (subjects_att > 0 && !isnull && state_att > 0)
		{
			Datum	   *values = palloc(sizeof(Datum) * desc->natts);
			bool	   *nulls = palloc(sizeof(bool) * desc->natts);
			Jsonb	   *state;

			heap_deform_tuple(row, desc, values, nulls);
			state = es_personal_unseal_state(s, DatumGetJsonbP(values[state_att - 1]),
											 es_snapshot_subjects(subjects, false));
			values[state_att - 1] = state ? JsonbPGetDatum(state) : (Datum) 0;
			nulls[state_att - 1] = (state == NULL);
			row = heap_form_tuple(desc, values, nulls);
		}
		tuplestore_puttuple(rsinfo->setResult, row);
	}
}

/*
 * es_get_snapshot(aggregate_id, max_version, include_stale) returns setof es_snapshots
 *
 * The latest snapshot at or below max_version (default: any), among the
 * usable ones unless include_stale.  No row when there is none.
 */
PG_FUNCTION_INFO_V1(es_get_snapshot);
Datum
es_get_snapshot(PG_FUNCTION_ARGS)
{
	char	   *aggregate_id;
	EsCall		call;
	Datum		args[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	int64		current;
	char	   *type;

	InitMaterializedSRF(fcinfo, 0);
	aggregate_id = es_arg_id(fcinfo, 0, "aggregate_id", true);
	es_call_begin(fcinfo, &call);
	type = snapshot_aggregate(aggregate_id, &current);
	args[0] = CStringGetTextDatum(aggregate_id);
	args[1] = Int64GetDatum(PG_ARGISNULL(1) ? PG_INT64_MAX : PG_GETARG_INT64(1));
	args[2] = BoolGetDatum(!PG_ARGISNULL(2) && PG_GETARG_BOOL(2));
	args[3] = CStringGetTextDatum(es_aggregate_type_fingerprint(type));
	if (SPI_execute_plan(es_plan(&get_plan), args, nulls, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the snapshots of aggregate \"%s\"", aggregate_id);
	snapshot_put_rows(call.store, (ReturnSetInfo *) fcinfo->resultinfo);
	es_call_end(&call);
	return (Datum) 0;
}

static EsPlan delete_plan = {
	"DELETE FROM @extschema@.es_snapshots s"
	" WHERE ($1 IS NULL OR s.aggregate_id OPERATOR(pg_catalog.=) $1)"
	"   AND ($2 IS NULL OR s.aggregate_type OPERATOR(pg_catalog.=) $2)"
	"   AND ($3 IS NULL OR s.version OPERATOR(pg_catalog.<) $3)"
	"   AND (NOT $4 OR s.fingerprint OPERATOR(pg_catalog.<>)"
	"        @extschema@.es_snapshot_fingerprint(s.aggregate_type))",
	4, {TEXTOID, TEXTOID, INT8OID, BOOLOID}
};

/*
 * es_delete_snapshots(aggregate_id, aggregate_type, below_version, stale_only)
 *	returns bigint
 *
 * Deletes the snapshots of an aggregate, of an aggregate type, or all (both
 * NULL), optionally only those below a version or only the stale ones.
 * Returns how many.  Snapshots are derived data: loads fold from the events
 * when none is left.
 */
PG_FUNCTION_INFO_V1(es_delete_snapshots);
Datum
es_delete_snapshots(PG_FUNCTION_ARGS)
{
	char	   *aggregate_id = es_arg_id(fcinfo, 0, "aggregate_id", false);
	char	   *aggregate_type = es_arg_name(fcinfo, 1, "aggregate_type", false);
	EsCall		call;
	Datum		args[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	uint64		deleted;

	args[0] = aggregate_id ? CStringGetTextDatum(aggregate_id) : (Datum) 0;
	nulls[0] = aggregate_id ? ' ' : 'n';
	args[1] = aggregate_type ? CStringGetTextDatum(aggregate_type) : (Datum) 0;
	nulls[1] = aggregate_type ? ' ' : 'n';
	args[2] = PG_ARGISNULL(2) ? (Datum) 0 : PG_GETARG_DATUM(2);
	nulls[2] = PG_ARGISNULL(2) ? 'n' : ' ';
	args[3] = BoolGetDatum(!PG_ARGISNULL(3) && PG_GETARG_BOOL(3));

	es_call_begin(fcinfo, &call);
	if (SPI_execute_plan(es_plan(&delete_plan), args, nulls, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not delete snapshots");
	deleted = SPI_processed;
	es_call_end(&call);
	PG_RETURN_INT64((int64) deleted);
}

/* Stale snapshots, and whether their aggregate's first events were dropped (es_drop_history). */
static EsPlan stale_plan = {
	"SELECT s.aggregate_id, s.version, s.automatic,"
	"       NOT EXISTS (SELECT FROM @extschema@.es_events e"
	"                    WHERE e.aggregate_id OPERATOR(pg_catalog.=) s.aggregate_id"
	"                      AND e.version OPERATOR(pg_catalog.=) 1)"
	"  FROM @extschema@.es_snapshots s"
	" WHERE ($1 IS NULL OR s.aggregate_id OPERATOR(pg_catalog.=) $1)"
	"   AND ($2 IS NULL OR s.aggregate_type OPERATOR(pg_catalog.=) $2)"
	"   AND s.fingerprint OPERATOR(pg_catalog.<>) @extschema@.es_snapshot_fingerprint(s.aggregate_type)"
	" ORDER BY s.aggregate_id, s.version",
	2, {TEXTOID, TEXTOID}
};

/*
 * es_rebuild_snapshots(aggregate_id, aggregate_type) returns bigint
 *
 * Remakes the stale snapshots of an aggregate, of an aggregate type, or all,
 * at their versions, with the current reducer and upcasters; each aggregate's
 * in version order, so that a rebuilt snapshot speeds up the next.  Returns
 * how many.  Those of aggregates whose first events were dropped cannot be
 * folded again: they stay, not serving, and a warning says how many.
 */
PG_FUNCTION_INFO_V1(es_rebuild_snapshots);
Datum
es_rebuild_snapshots(PG_FUNCTION_ARGS)
{
	char	   *aggregate_id = es_arg_id(fcinfo, 0, "aggregate_id", false);
	char	   *aggregate_type = es_arg_name(fcinfo, 1, "aggregate_type", false);
	char	   *taken_by = GetUserNameFromId(GetUserId(), false);
	EsCall		call;
	Datum		args[2];
	char		nulls[2];
	SPITupleTable *stale;
	uint64		n;
	uint64		i;
	uint64		kept = 0;

	args[0] = aggregate_id ? CStringGetTextDatum(aggregate_id) : (Datum) 0;
	nulls[0] = aggregate_id ? ' ' : 'n';
	args[1] = aggregate_type ? CStringGetTextDatum(aggregate_type) : (Datum) 0;
	nulls[1] = aggregate_type ? ' ' : 'n';

	es_call_begin(fcinfo, &call);
	if (SPI_execute_plan(es_plan(&stale_plan), args, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not find stale snapshots");
	stale = SPI_tuptable;
	n = SPI_processed;
	for (i = 0; i < n; i++)
	{
		bool		isnull;
		char	   *id = TextDatumGetCString(SPI_getbinval(stale->vals[i], stale->tupdesc, 1, &isnull));
		int64		version = DatumGetInt64(SPI_getbinval(stale->vals[i], stale->tupdesc, 2, &isnull));
		bool		automatic = DatumGetBool(SPI_getbinval(stale->vals[i], stale->tupdesc, 3, &isnull));

		CHECK_FOR_INTERRUPTS();
		if (DatumGetBool(SPI_getbinval(stale->vals[i], stale->tupdesc, 4, &isnull)))
		{
			kept++;
			continue;
		}
		snapshot_take(call.store, id, version, automatic, taken_by);
	}
	es_call_end(&call);
	if (kept > 0)
		ereport(WARNING,
				(errmsg("%llu stale snapshots were not remade: the first events of their aggregates were dropped from the database",
						(unsigned long long) kept),
				 errdetail("They stay, and do not serve: a load of such an aggregate is refused while its reducer and upcasters differ from those the snapshot was taken with."),
				 errhint("Register those again, or load the events back from their export (es_dropped_history).")));
	PG_RETURN_INT64((int64) (n - kept));
}
