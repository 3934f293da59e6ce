/*-------------------------------------------------------------------------
 *
 * upcast.c
 *	  Event schema evolution: upcasters, and payloads upgraded on read.
 *
 * Events are immutable, so their payloads evolve by schema versions.  Each
 * event type has a current schema version (es_event_types.schema_version);
 * each stored event keeps the version it was written with.  An upcaster
 * converts a payload of one version to the next; on read, an older payload
 * goes through the chain up to the current version.  Stored rows never
 * change: the reads return the upgraded payload and the current version.
 *
 * Upcasters are user functions, run as their owners through
 * es_call_user_function.  Needs an SPI connection (es_call_begin).
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "read/upcast.h"

#include "access/htup_details.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"
#include "utils/syscache.h"

#include "core/event.h"
#include "core/store.h"
#include "core/validate.h"
#include "write/event_type.h"

/*
 * es_upcast_row: upgrade the payload of one deformed es_events row to the
 * current schema version of its event type, in place (data and
 * schema_version).  The new payload is palloc'd in the current context.
 * Returns whether the row changed.
 */
bool
es_upcast_row(Datum *values, bool *nulls)
{
	char		event_type[ES_MAX_NAME_LEN + 1];
	EsEventType type;
	int32		version = DatumGetInt32(values[EV_SCHEMA_VERSION]);
	Datum		data = values[EV_DATA];

	text_to_cstring_buffer(DatumGetTextPP(values[EV_EVENT_TYPE]), event_type, sizeof(event_type));
	es_event_type_lookup(event_type, &type);
	if (version >= type.schema_version)
		return false;

	for (; version < type.schema_version; version++)
	{
		EsUserFunction *fn = es_event_type_upcaster(event_type, version);
		bool		isnull;
		Jsonb	   *out;

		if (fn == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_FUNCTION),
					 errmsg("no upcaster for event type \"%s\" from schema version %d", event_type, version),
					 errdetail("The event type's current schema version is %d; stored events of version %d cannot be read.",
							   type.schema_version, version),
					 errhint("Register one: SELECT es_register_upcaster('%s', %d, 'my_upcaster(jsonb)');",
							 event_type, version)));
		data = es_call_user_function(fn, data, (Datum) 0, &isnull);
		out = isnull ? NULL : DatumGetJsonbP(data);
		if (out == NULL || !JB_ROOT_IS_OBJECT(out))
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("upcaster %s returned %s for event type \"%s\"",
							format_procedure(fn->flinfo.fn_oid), out == NULL ? "NULL" : "a value that is not a JSON object",
							event_type),
					 errdetail("Upcasters take the payload of schema version %d and return a JSON object of version %d.",
							   version, version + 1)));
		data = PointerGetDatum(out);
	}
	values[EV_DATA] = data;
	nulls[EV_DATA] = false;
	values[EV_SCHEMA_VERSION] = Int32GetDatum(type.schema_version);
	return true;
}

/*
 * Check that fn can serve as a reducer or upcaster: a plain function with
 * the given argument types returning jsonb, owned by the registering role (or
 * registered by a superuser).  It will run as its owner: registering someone
 * else's function would lend the registering role its owner's rights.
 */
void
es_check_user_function(Oid fn, const char *role, int nargs, const Oid *argtypes,
					   const char *signature, Oid caller)
{
	HeapTuple	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	Form_pg_proc proc;
	bool		ok;
	int			i;

	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function with OID %u does not exist", fn)));
	proc = (Form_pg_proc) GETSTRUCT(tup);
	ok = proc->prokind == PROKIND_FUNCTION && !proc->proretset &&
		proc->prorettype == JSONBOID && proc->pronargs == nargs;
	for (i = 0; ok && i < nargs; i++)
		ok = proc->proargtypes.values[i] == argtypes[i];
	ReleaseSysCache(tup);
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("function %s cannot be %s", format_procedure(fn), role),
				 errdetail("It must be a plain function %s.", signature)));
	if (!pg_proc_ownercheck(fn, caller))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of function %s to register it as %s", format_procedure(fn), role),
				 errdetail("Reducers and upcasters run as the owners of their functions.")));
}

static EsPlan register_plan = {
	"INSERT INTO @extschema@.es_upcasters (event_type, from_version, upcaster, registered_by)"
	" VALUES ($1, $2, $3, $4)"
	" ON CONFLICT (event_type, from_version) DO UPDATE"
	"    SET upcaster = excluded.upcaster, registered_at = pg_catalog.now(),"
	"        registered_by = excluded.registered_by",
	4, {TEXTOID, INT4OID, REGPROCEDUREOID, TEXTOID}
};

static EsPlan bump_plan = {
	"UPDATE @extschema@.es_event_types"
	"   SET schema_version = pg_catalog.int4larger(schema_version, $2 OPERATOR(pg_catalog.+) 1)"
	" WHERE event_type OPERATOR(pg_catalog.=) $1",
	2, {TEXTOID, INT4OID}
};

/*
 * es_register_upcaster(event_type, from_version, function) returns void
 *
 * Registers (or replaces) the function(data jsonb) returns jsonb that turns
 * a payload of schema version from_version into one of from_version + 1.
 * The event type's current schema version becomes at least from_version + 1:
 * new appends are then expected in that version.
 */
PG_FUNCTION_INFO_V1(es_register_upcaster);
Datum
es_register_upcaster(PG_FUNCTION_ARGS)
{
	char	   *event_type = es_arg_name(fcinfo, 0, "event_type", true);
	int32		from_version;
	Oid			fn;
	Oid			argtypes[1] = {JSONBOID};
	char	   *registered_by = GetUserNameFromId(GetUserId(), false);
	EsCall		call;
	EsEventType type;
	Datum		args[4];

	if (PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("from_version and function must not be null")));
	from_version = PG_GETARG_INT32(1);
	if (from_version < 1)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("from_version must be at least 1")));
	fn = PG_GETARG_OID(2);
	es_check_user_function(fn, "an upcaster", 1, argtypes, "(data jsonb) returning jsonb", GetUserId());

	es_call_begin(fcinfo, &call);
	es_event_type_lookup(event_type, &type);
	args[0] = CStringGetTextDatum(event_type);
	args[1] = Int32GetDatum(from_version);
	args[2] = ObjectIdGetDatum(fn);
	args[3] = CStringGetTextDatum(registered_by);
	if (SPI_execute_plan(es_plan(&register_plan), args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not register the upcaster");
	if (SPI_execute_plan(es_plan(&bump_plan), args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not update the schema version of event type \"%s\"", event_type);
	es_call_end(&call);
	PG_RETURN_VOID();
}
