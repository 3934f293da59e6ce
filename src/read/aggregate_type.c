/*-------------------------------------------------------------------------
 *
 * aggregate_type.c
 *	  Per aggregate type: the reducer that folds its events, the fingerprint
 *	  of everything that shapes its state, and its snapshot policy; with the
 *	  default reducer and the functions that register the others.
 *
 * A snapshot is only as good as the code that made it.  Its fingerprint is a
 * digest of the reducer of its aggregate type and of the upcasters of every
 * event type the aggregate type can have, definitions included (name,
 * arguments, source, configuration), and of the current schema versions.  A
 * snapshot whose fingerprint differs from the current one is stale: loads
 * skip it, es_rebuild_snapshots remakes it.
 *
 * The backend-local cache of these is emptied by a relcache invalidation of
 * es_reducers, es_upcasters, es_event_types or es_snapshot_policies (a
 * statement trigger sends one on any change) and by any change of a function
 * (pg_proc syscache invalidation), then filled again on demand.  Needs an
 * SPI connection.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "read/aggregate_type.h"

#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "core/validate.h"
#include "read/upcast.h"

/*
 * Part of every fingerprint made with the default reducer.  Change it when
 * es_default_reducer changes what it computes: snapshots made by the old one
 * then stop being used.
 */
#define DEFAULT_REDUCER_REVISION "es_default_reducer 1"

static MemoryContext aggregate_type_cxt = NULL;
static HTAB *aggregate_types = NULL;
static bool aggregate_types_stale = false;

/* es_store_on_change callback: the catalogs the cache is built from changed. */
static void
aggregate_type_store_changed(const EsStore *store, Oid relid)
{
	if (relid == InvalidOid || relid == store->event_types_relid || relid == store->upcasters_relid ||
		relid == store->reducers_relid || relid == store->policies_relid)
		aggregate_types_stale = true;
}

/* A function changed: the fingerprints of reducers and upcasters may have. */
static void
aggregate_type_proc_changed(Datum arg, int cacheid, uint32 hashvalue)
{
	aggregate_types_stale = true;
}

/* es_aggregate_type_init: from _PG_init. */
void
es_aggregate_type_init(void)
{
	es_store_on_change(aggregate_type_store_changed);
	CacheRegisterSyscacheCallback(PROCOID, aggregate_type_proc_changed, (Datum) 0);
}

/*
 * Run one of the cache's catalog queries on what is committed now, not on
 * the caller's snapshot: the cache outlives the transaction, and an entry
 * filled from a transaction snapshot older than a registration would stay
 * stale for good (the invalidation came before it).
 */
static int
aggregate_type_query(EsPlan *plan, Datum *args)
{
	int			rc;

	PushActiveSnapshot(GetLatestSnapshot());
	rc = SPI_execute_plan(es_plan(plan), args, NULL, true, 1);
	PopActiveSnapshot();
	return rc;
}

/* The cache entry of aggregate_type, created empty on a miss. */
static EsAggregateTypeInfo *
aggregate_type_entry(const char *aggregate_type)
{
	EsAggregateTypeInfo *entry;
	bool		found;

	if (aggregate_types == NULL || aggregate_types_stale)
	{
		HASHCTL		ctl;

		if (aggregate_type_cxt == NULL)
			aggregate_type_cxt = AllocSetContextCreate(CacheMemoryContext, "ultracore_es aggregate types",
													   ALLOCSET_SMALL_SIZES);
		else
			MemoryContextReset(aggregate_type_cxt);
		ctl.keysize = ES_MAX_NAME_LEN + 1;
		ctl.entrysize = sizeof(EsAggregateTypeInfo);
		ctl.hcxt = aggregate_type_cxt;
		aggregate_types = hash_create("ultracore_es aggregate types", 64, &ctl,
									  HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
		aggregate_types_stale = false;
	}
	entry = hash_search(aggregate_types, aggregate_type, HASH_ENTER, &found);
	if (!found)
	{
		entry->reducer_loaded = false;
		entry->reducer_name = NULL;
		entry->fingerprint = NULL;
		entry->policy_loaded = false;
		entry->snapshot_every = 0;
	}
	return entry;
}

/* A function's name as recorded in snapshots: schema.name(argument types). */
#define FUNCTION_NAME_SQL(p, n) \
	"pg_catalog.format('%I.%I(%s)', " n ".nspname, " p ".proname," \
	" pg_catalog.pg_get_function_identity_arguments(" p ".oid))"

/*
 * The registered reducer; its name is NULL when its function was dropped
 * since (es_reducers holds its OID, which nothing depends on).
 */
static EsPlan reducer_plan = {
	"SELECT r.reducer::pg_catalog.oid, CASE WHEN p.oid IS NOT NULL THEN " FUNCTION_NAME_SQL("p", "n") " END"
	"  FROM @extschema@.es_reducers r"
	"  LEFT JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) r.reducer::pg_catalog.oid"
	"  LEFT JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace"
	" WHERE r.aggregate_type OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}, true
};

/*
 * es_aggregate_type_reducer: the cache entry of aggregate_type with its
 * reducer loaded (flinfo.fn_oid invalid for the default reducer).
 */
EsAggregateTypeInfo *
es_aggregate_type_reducer(const char *aggregate_type)
{
	EsAggregateTypeInfo *entry = aggregate_type_entry(aggregate_type);
	Datum		arg;
	bool		isnull;

	if (entry->reducer_loaded)
		return entry;
	arg = CStringGetTextDatum(aggregate_type);
	if (aggregate_type_query(&reducer_plan, &arg) != SPI_OK_SELECT)
		elog(ERROR, "could not look up the reducer of aggregate type \"%s\"", aggregate_type);
	if (SPI_processed == 1)
	{
		Oid			fn = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		Datum		name = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);

		/* Not the default fold in its place: the states would change unseen. */
		if (isnull)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_FUNCTION),
					 errmsg("the reducer of aggregate type \"%s\" was dropped", aggregate_type),
					 errdetail("es_reducers names function %u, which no longer exists.", fn),
					 errhint("Register it again with es_register_reducer('%s', ...), or pass NULL there for the default reducer.",
							 aggregate_type)));
		es_user_function_init(&entry->reducer, fn, aggregate_type_cxt);
		entry->reducer_name = MemoryContextStrdup(aggregate_type_cxt, TextDatumGetCString(name));
	}
	else
	{
		memset(&entry->reducer, 0, sizeof(entry->reducer));
		entry->reducer.flinfo.fn_oid = InvalidOid;
		entry->reducer_name = "es_default_reducer";
	}
	SPI_freetuptable(SPI_tuptable);
	entry->reducer_loaded = true;
	return entry;
}

/*
 * The digest of what shapes the states of $1: its reducer (or the default
 * reducer's revision, $2), the upcasters of the event types it can have,
 * and their schema versions.
 */
static EsPlan fingerprint_plan = {
	"SELECT pg_catalog.md5(pg_catalog.string_agg(part, '|' ORDER BY part)) FROM ("
	" SELECT 'reducer ' OPERATOR(pg_catalog.||)"
	"        CASE WHEN p.oid IS NULL THEN 'dropped ' OPERATOR(pg_catalog.||) r.reducer::pg_catalog.oid"
	"             ELSE " FUNCTION_NAME_SQL("p", "n")
	"                  OPERATOR(pg_catalog.||) ' ' OPERATOR(pg_catalog.||)"
	"                  pg_catalog.md5(pg_catalog.concat(p.prosrc, '/', p.probin, '/', p.proconfig)) END AS part"
	"   FROM @extschema@.es_reducers r"
	"   LEFT JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) r.reducer::pg_catalog.oid"
	"   LEFT JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace"
	"  WHERE r.aggregate_type OPERATOR(pg_catalog.=) $1"
	" UNION ALL"
	" SELECT 'reducer ' OPERATOR(pg_catalog.||) $2"
	"  WHERE NOT EXISTS (SELECT FROM @extschema@.es_reducers r"
	"                     WHERE r.aggregate_type OPERATOR(pg_catalog.=) $1)"
	" UNION ALL"
	" SELECT pg_catalog.concat_ws(' ', 'upcaster', u.event_type, u.from_version, " FUNCTION_NAME_SQL("p", "n") ","
	"        pg_catalog.md5(pg_catalog.concat(p.prosrc, '/', p.probin, '/', p.proconfig)))"
	"   FROM @extschema@.es_upcasters u"
	"   JOIN @extschema@.es_event_types t ON t.event_type OPERATOR(pg_catalog.=) u.event_type"
	"   JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) u.upcaster::pg_catalog.oid"
	"   JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace"
	"  WHERE t.aggregate_type OPERATOR(pg_catalog.=) $1 OR t.aggregate_type IS NULL"
	" UNION ALL"
	" SELECT pg_catalog.concat_ws(' ', 'schema', t.event_type, t.schema_version)"
	"   FROM @extschema@.es_event_types t"
	"  WHERE (t.aggregate_type OPERATOR(pg_catalog.=) $1 OR t.aggregate_type IS NULL)"
	"    AND t.schema_version OPERATOR(pg_catalog.>) 1"
	") s",
	2, {TEXTOID, TEXTOID}, true
};

/*
 * es_aggregate_type_fingerprint: the current fingerprint of aggregate_type's
 * snapshots (see the file header).  The string lives in the cache.
 */
const char *
es_aggregate_type_fingerprint(const char *aggregate_type)
{
	EsAggregateTypeInfo *entry = aggregate_type_entry(aggregate_type);
	Datum		args[2];
	Datum		fingerprint;
	bool		isnull;

	if (entry->fingerprint != NULL)
		return entry->fingerprint;
	args[0] = CStringGetTextDatum(aggregate_type);
	args[1] = CStringGetTextDatum(DEFAULT_REDUCER_REVISION);
	if (aggregate_type_query(&fingerprint_plan, args) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not compute the fingerprint of aggregate type \"%s\"", aggregate_type);
	fingerprint = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)					/* there is always a reducer part */
		elog(ERROR, "could not compute the fingerprint of aggregate type \"%s\"", aggregate_type);
	entry->fingerprint = MemoryContextStrdup(aggregate_type_cxt, TextDatumGetCString(fingerprint));
	SPI_freetuptable(SPI_tuptable);
	return entry->fingerprint;
}

static EsPlan policy_plan = {
	"SELECT every_n_events FROM @extschema@.es_snapshot_policies"
	" WHERE aggregate_type OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}, true
};

/*
 * es_aggregate_type_snapshot_every: N when aggregates of the type are
 * snapshotted every N events, 0 when not.  One hash probe when cached, so
 * that every append can ask.
 */
int32
es_aggregate_type_snapshot_every(const char *aggregate_type)
{
	EsAggregateTypeInfo *entry = aggregate_type_entry(aggregate_type);
	Datum		arg;
	bool		isnull;

	if (entry->policy_loaded)
		return entry->snapshot_every;
	arg = CStringGetTextDatum(aggregate_type);
	if (aggregate_type_query(&policy_plan, &arg) != SPI_OK_SELECT)
		elog(ERROR, "could not look up the snapshot policy of aggregate type \"%s\"", aggregate_type);
	entry->snapshot_every = SPI_processed == 1 ?
		DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) : 0;
	SPI_freetuptable(SPI_tuptable);
	entry->policy_loaded = true;
	return entry->snapshot_every;
}

/*
 * es_is_creation_event: an event that creates its aggregate, by the guide's
 * naming: ..._CREATED, ..._OPENED, ..._SUBMITTED, ..._INITIATED.
 */
bool
es_is_creation_event(const char *event_type)
{
	static const char *const suffixes[] = {"_CREATED", "_OPENED", "_SUBMITTED", "_INITIATED"};
	size_t		len = strlen(event_type);
	size_t		i;

	for (i = 0; i < lengthof(suffixes); i++)
	{
		size_t		slen = strlen(suffixes[i]);

		if (len > slen && strcmp(event_type + len - slen, suffixes[i]) == 0)
			return true;
	}
	return false;
}

/*
 * es_default_reducer(state jsonb, event es_events) returns jsonb
 *
 * The guide's fold, for one event: a creating event sets the state to its
 * data; any other event merges its data into the state (top-level keys, the
 * event's values winning).  A NULL state is the empty object.  es_load_state
 * applies the same rule without calling this function per event.
 */
PG_FUNCTION_INFO_V1(es_default_reducer);
Datum
es_default_reducer(PG_FUNCTION_ARGS)
{
	HeapTupleHeader event;
	Datum		d;
	bool		isnull;
	char	   *event_type;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("event must not be null")));
	event = PG_GETARG_HEAPTUPLEHEADER(1);
	d = GetAttributeByNum(event, EV_EVENT_TYPE + 1, &isnull);
	event_type = isnull ? "" : TextDatumGetCString(d);
	d = GetAttributeByNum(event, EV_DATA + 1, &isnull);
	if (isnull)
		PG_RETURN_DATUM(PG_ARGISNULL(0) ? JsonbPGetDatum(es_empty_object()) : PG_GETARG_DATUM(0));
	if (PG_ARGISNULL(0) || es_is_creation_event(event_type))
		PG_RETURN_DATUM(d);
	PG_RETURN_DATUM(DirectFunctionCall2(jsonb_concat, PG_GETARG_DATUM(0), d));
}

static EsPlan set_reducer_plan = {
	"INSERT INTO @extschema@.es_reducers (aggregate_type, reducer, registered_by)"
	" VALUES ($1, $2, $3)"
	" ON CONFLICT (aggregate_type) DO UPDATE"
	"    SET reducer = excluded.reducer, registered_at = pg_catalog.now(),"
	"        registered_by = excluded.registered_by",
	3, {TEXTOID, REGPROCEDUREOID, TEXTOID}
};

static EsPlan unset_reducer_plan = {
	"DELETE FROM @extschema@.es_reducers WHERE aggregate_type OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}
};

/*
 * es_register_reducer(aggregate_type, function) returns void
 *
 * Folds the events of aggregate_type with function(state jsonb, event
 * es_events) returns jsonb from now on; NULL goes back to the default
 * reducer.  Snapshots made by the previous reducer become stale.
 */
PG_FUNCTION_INFO_V1(es_register_reducer);
Datum
es_register_reducer(PG_FUNCTION_ARGS)
{
	char	   *aggregate_type = es_arg_name(fcinfo, 0, "aggregate_type", true);
	char	   *registered_by = GetUserNameFromId(GetUserId(), false);
	EsCall		call;
	Datum		args[3];

	es_call_begin(fcinfo, &call);
	args[0] = CStringGetTextDatum(aggregate_type);
	if (PG_ARGISNULL(1))
	{
		if (SPI_execute_plan(es_plan(&unset_reducer_plan), args, NULL, false, 0) != SPI_OK_DELETE)
			elog(ERROR, "could not unregister the reducer of \"%s\"", aggregate_type);
	}
	else
	{
		Oid			argtypes[2] = {JSONBOID, call.store->events_rowtype};

		es_check_user_function(PG_GETARG_OID(1), "a reducer", 2, argtypes,
							   "(state jsonb, event es_events) returning jsonb", call.caller);
		args[1] = PG_GETARG_DATUM(1);
		args[2] = CStringGetTextDatum(registered_by);
		if (SPI_execute_plan(es_plan(&set_reducer_plan), args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not register the reducer of \"%s\"", aggregate_type);
	}
	es_call_end(&call);
	PG_RETURN_VOID();
}

static EsPlan set_policy_plan = {
	"INSERT INTO @extschema@.es_snapshot_policies (aggregate_type, every_n_events, set_by)"
	" VALUES ($1, $2, $3)"
	" ON CONFLICT (aggregate_type) DO UPDATE"
	"    SET every_n_events = excluded.every_n_events, set_at = pg_catalog.now(),"
	"        set_by = excluded.set_by",
	3, {TEXTOID, INT4OID, TEXTOID}
};

static EsPlan unset_policy_plan = {
	"DELETE FROM @extschema@.es_snapshot_policies WHERE aggregate_type OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}
};

/*
 * es_set_snapshot_policy(aggregate_type, every_n_events) returns void
 *
 * From now on, an append that takes an aggregate of the type to a multiple
 * of every_n_events also snapshots it there, in the same transaction.  NULL
 * or 0 stops automatic snapshots.
 */
PG_FUNCTION_INFO_V1(es_set_snapshot_policy);
Datum
es_set_snapshot_policy(PG_FUNCTION_ARGS)
{
	char	   *aggregate_type = es_arg_name(fcinfo, 0, "aggregate_type", true);
	int32		every = PG_ARGISNULL(1) ? 0 : PG_GETARG_INT32(1);
	char	   *set_by = GetUserNameFromId(GetUserId(), false);
	EsCall		call;
	Datum		args[3];

	if (every < 0)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("every_n_events must not be negative"),
				 errhint("Use NULL or 0 to stop automatic snapshots.")));
	es_call_begin(fcinfo, &call);
	args[0] = CStringGetTextDatum(aggregate_type);
	args[1] = Int32GetDatum(every);
	args[2] = CStringGetTextDatum(set_by);
	if (every == 0)
	{
		if (SPI_execute_plan(es_plan(&unset_policy_plan), args, NULL, false, 0) != SPI_OK_DELETE)
			elog(ERROR, "could not remove the snapshot policy of \"%s\"", aggregate_type);
	}
	else if (SPI_execute_plan(es_plan(&set_policy_plan), args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not set the snapshot policy of \"%s\"", aggregate_type);
	es_call_end(&call);
	PG_RETURN_VOID();
}

/*
 * es_snapshot_fingerprint(aggregate_type) returns text
 *
 * The fingerprint the aggregate type's snapshots are made with now; the
 * es_snapshot_list view compares each snapshot's against it.
 */
PG_FUNCTION_INFO_V1(es_snapshot_fingerprint);
Datum
es_snapshot_fingerprint(PG_FUNCTION_ARGS)
{
	char	   *aggregate_type = es_arg_name(fcinfo, 0, "aggregate_type", true);
	EsCall		call;
	const char *fingerprint;

	es_call_begin(fcinfo, &call);
	fingerprint = es_aggregate_type_fingerprint(aggregate_type);	/* lives in the cache */
	es_call_end(&call);
	PG_RETURN_TEXT_P(cstring_to_text(fingerprint));
}

