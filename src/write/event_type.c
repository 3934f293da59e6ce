/*-------------------------------------------------------------------------
 *
 * event_type.c
 *	  The event-type catalog (es_event_types): registration, and the
 *	  backend-local cache the write path validates every event against and
 *	  the read paths take upcasters from.
 *
 * The cache holds the types this backend has used, with their current schema
 * version and upcasters.  It is emptied when a relcache invalidation arrives
 * for es_event_types or es_upcasters, which a statement trigger sends on any
 * change (plain DML on a table does not), so a change reaches every backend
 * at its next transaction.  Types are never deleted, so a stale
 * positive entry can only lag a change, never accept an unknown type.
 *
 * Needs an open transaction and an SPI connection (es_call_begin).
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "write/event_type.h"

#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"

#include "core/validate.h"

typedef struct EventTypeEntry
{
	char		name[ES_MAX_NAME_LEN + 1];	/* hash key */
	EsEventType info;
	bool		upcasters_loaded;
	EsUserFunction *upcasters;	/* [v - 1] converts schema version v to v + 1 */
} EventTypeEntry;

static MemoryContext event_type_cxt = NULL;
static HTAB *event_types = NULL;
static bool event_types_stale = false;

/*
 * The entry found last: a stream read asks for the type of every row, and
 * runs of rows share one, which then costs a string compare instead of
 * hashing a 129-byte key (2% of an es_get_events of 1,000 events).
 * Entries of a dynahash table never move; this one goes with the table.
 */
static EventTypeEntry *last_entry = NULL;

static EsPlan lookup_plan = {
	"SELECT aggregate_type, schema_version FROM @extschema@.es_event_types"
	" WHERE event_type OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}
};

static EsPlan upcasters_plan = {
	"SELECT from_version, upcaster FROM @extschema@.es_upcasters"
	" WHERE event_type OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}
};

/*
 * es_store_on_change callback, possibly while a lookup is under way: only
 * flags the cache, which the next lookup rebuilds.
 */
static void
event_type_store_changed(const EsStore *store, Oid relid)
{
	if (relid == InvalidOid || relid == store->event_types_relid || relid == store->upcasters_relid)
		event_types_stale = true;
}

/* es_event_type_init: from _PG_init. */
void
es_event_type_init(void)
{
	es_store_on_change(event_type_store_changed);
}

/*
 * The cache entry of event_type, read from the catalog on a miss; an unknown
 * type is an error that says how to register it.  The entry (and the
 * function descriptors it holds) stays valid until the next call, which may
 * rebuild the cache; user functions called meanwhile cannot call back into
 * the extension (es_call_user_function), so none of them can rebuild it.
 */
static EventTypeEntry *
event_type_entry(const char *event_type)
{
	EventTypeEntry *entry;
	bool		found;
	bool		isnull;
	Datum		arg;
	Datum		d;
	EsEventType info;

	if (event_types == NULL || event_types_stale)
	{
		HASHCTL		ctl;

		if (event_type_cxt == NULL)
			event_type_cxt = AllocSetContextCreate(CacheMemoryContext, "ultracore_es event types",
												   ALLOCSET_SMALL_SIZES);
		else
			MemoryContextReset(event_type_cxt);
		ctl.keysize = ES_MAX_NAME_LEN + 1;
		ctl.entrysize = sizeof(EventTypeEntry);
		ctl.hcxt = event_type_cxt;
		event_types = hash_create("ultracore_es event types", 128, &ctl,
								  HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
		event_types_stale = false;
		last_entry = NULL;
	}

	if (last_entry != NULL && strcmp(last_entry->name, event_type) == 0)
		return last_entry;
	entry = hash_search(event_types, event_type, HASH_FIND, NULL);
	if (entry != NULL)
		return last_entry = entry;

	arg = CStringGetTextDatum(event_type);
	if (SPI_execute_plan(es_plan(&lookup_plan), &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up event type \"%s\"", event_type);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("event type \"%s\" is not registered", event_type),
				 errdetail("Appends accept only the event types of the es_event_types catalog."),
				 errhint("Register it first: SELECT es_register_event_type(name => '%s', aggregate_type => '...', description => '...');",
						 event_type)));

	memset(&info, 0, sizeof(info));
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		text_to_cstring_buffer(DatumGetTextPP(d), info.aggregate_type, sizeof(info.aggregate_type));
	info.schema_version = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	SPI_freetuptable(SPI_tuptable);

	entry = hash_search(event_types, event_type, HASH_ENTER, &found);
	entry->info = info;
	entry->upcasters_loaded = false;
	entry->upcasters = NULL;
	return last_entry = entry;
}

/*
 * es_event_type_lookup: copy the catalog entry of event_type into *out, or
 * raise an error naming the unknown type and how to register it.  Needs SPI.
 */
void
es_event_type_lookup(const char *event_type, EsEventType *out)
{
	*out = event_type_entry(event_type)->info;
}

/*
 * es_event_type_upcaster: the function that converts payloads of event_type
 * from schema version from_version to the next, or NULL when none is
 * registered.  Looked up once per type and kept with its cache entry.  Needs
 * SPI.
 */
EsUserFunction *
es_event_type_upcaster(const char *event_type, int32 from_version)
{
	EventTypeEntry *entry = event_type_entry(event_type);

	if (!entry->upcasters_loaded)
	{
		Datum		arg = CStringGetTextDatum(event_type);
		int			nsteps = Max(entry->info.schema_version - 1, 0);
		uint64		i;
		bool		isnull;

		if (SPI_execute_plan(es_plan(&upcasters_plan), &arg, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not look up the upcasters of event type \"%s\"", event_type);
		entry->upcasters = MemoryContextAllocZero(event_type_cxt, sizeof(EsUserFunction) * Max(nsteps, 1));
		for (i = 0; i < SPI_processed; i++)
		{
			int32		from = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
			Oid			fn = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));

			if (from >= 1 && from <= nsteps)
				es_user_function_init(&entry->upcasters[from - 1], fn, event_type_cxt);
		}
		SPI_freetuptable(SPI_tuptable);
		entry->upcasters_loaded = true;
	}
	if (from_version < 1 || from_version >= entry->info.schema_version ||
		!OidIsValid(entry->upcasters[from_version - 1].flinfo.fn_oid))
		return NULL;
	return &entry->upcasters[from_version - 1];
}

static EsPlan find_for_update_plan = {
	"SELECT aggregate_type FROM @extschema@.es_event_types"
	" WHERE event_type OPERATOR(pg_catalog.=) $1 FOR UPDATE",
	1, {TEXTOID}
};

static EsPlan insert_plan = {
	"INSERT INTO @extschema@.es_event_types"
	" (event_type, aggregate_type, description, registered_by)"
	" VALUES ($1, $2, $3, $4) ON CONFLICT (event_type) DO NOTHING",
	4, {TEXTOID, TEXTOID, TEXTOID, TEXTOID}
};

static EsPlan describe_plan = {
	"UPDATE @extschema@.es_event_types SET description = $2"
	" WHERE event_type OPERATOR(pg_catalog.=) $1",
	2, {TEXTOID, TEXTOID}
};

/*
 * es_register_event_type(name, aggregate_type, description) returns boolean
 *
 * Adds an event type to the catalog; true when it is new.  Registering an
 * existing type again updates its description, unless it would move the type
 * to another aggregate type, which is refused: stored events of that type
 * would then contradict the catalog.  A NULL aggregate_type makes the type
 * usable by aggregates of any type.
 */
PG_FUNCTION_INFO_V1(es_register_event_type);
Datum
es_register_event_type(PG_FUNCTION_ARGS)
{
	char	   *name = es_arg_name(fcinfo, 0, "event type name", true);
	char	   *aggregate_type = es_arg_name(fcinfo, 1, "aggregate_type", false);
	char	   *description = PG_ARGISNULL(2) ? "" : text_to_cstring(PG_GETARG_TEXT_PP(2));
	EsCall		call;
	Datum		args[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	bool		created = false;
	char	   *registered_by;

	registered_by = GetUserNameFromId(GetUserId(), false);
	es_call_begin(fcinfo, &call);

	args[0] = CStringGetTextDatum(name);
	if (SPI_execute_plan(es_plan(&find_for_update_plan), args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up event type \"%s\"", name);

	if (SPI_processed == 0)
	{
		args[1] = aggregate_type ? CStringGetTextDatum(aggregate_type) : (Datum) 0;
		nulls[1] = aggregate_type ? ' ' : 'n';
		args[2] = CStringGetTextDatum(description);
		args[3] = CStringGetTextDatum(registered_by);
		if (SPI_execute_plan(es_plan(&insert_plan), args, nulls, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not register event type \"%s\"", name);
		created = (SPI_processed == 1);
	}
	if (!created)
	{
		bool		isnull;
		Datum		d;
		char	   *existing = NULL;

		/* Registered concurrently or earlier: lock it and compare. */
		if (SPI_execute_plan(es_plan(&find_for_update_plan), args, NULL, false, 1) != SPI_OK_SELECT ||
			SPI_processed != 1)
			elog(ERROR, "could not look up event type \"%s\"", name);
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (!isnull)
			existing = TextDatumGetCString(d);
		if (existing != NULL && (aggregate_type == NULL || strcmp(existing, aggregate_type) != 0))
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("event type \"%s\" is already registered for aggregate type \"%s\"", name, existing),
					 errdetail("An event type keeps the aggregate type it was registered with, because stored events depend on it."),
					 errhint("Register a new event type name instead.")));
		if (existing == NULL && aggregate_type != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("event type \"%s\" is already registered for any aggregate type", name),
					 errdetail("An event type keeps the aggregate type it was registered with, because stored events depend on it."),
					 errhint("Register a new event type name instead.")));
		if (!PG_ARGISNULL(2))
		{
			args[1] = CStringGetTextDatum(description);
			if (SPI_execute_plan(es_plan(&describe_plan), args, NULL, false, 0) != SPI_OK_UPDATE)
				elog(ERROR, "could not update event type \"%s\"", name);
		}
	}

	es_call_end(&call);
	PG_RETURN_BOOL(created);
}
