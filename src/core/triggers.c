/*-------------------------------------------------------------------------
 *
 * triggers.c
 *	  The extension's statement triggers: the one that makes the events
 *	  table append-only, and the one that tells every backend a catalog
 *	  table of the extension changed.
 *
 * Events are facts: UPDATE, DELETE and TRUNCATE of es_events are refused for
 * every role, the owner and superusers included (DESIGN.md, decision 6).  The
 * trigger is ENABLE ALWAYS, so session_replication_role does not switch it
 * off; only dropping it (DDL, visible in the logs) would.  Mistakes are
 * corrected the event-sourcing way: by appending a compensating event.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"

#include "access/htup_details.h"
#include "commands/trigger.h"
#include "utils/inval.h"
#include "utils/rel.h"

#include "core/event.h"
#include "core/partitions.h"

PG_FUNCTION_INFO_V1(es_refuse_modification);
Datum
es_refuse_modification(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	const char *operation;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "es_refuse_modification must be called as a trigger");

	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		operation = "UPDATE";
	else if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		operation = "DELETE";
	else if (TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
		operation = "TRUNCATE";
	else
		operation = "INSERT";

	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("%s on %s is not allowed", operation,
					RelationGetRelationName(trigdata->tg_relation)),
			 errdetail("The event store is append-only: stored events are never changed or removed, by any role."),
			 errhint("Record a correction as a new event, for example TRANSACTION_REVERSED.")));
	return PointerGetDatum(NULL);
}

/*
 * es_overflow_filling: BEFORE INSERT FOR EACH ROW on es_events_overflow.
 * A row an SQL statement routes there (a restore's COPY, an owner's INSERT
 * into es_events) makes the DEFAULT partition one that readers must look
 * in (partitions.c); the appends' C path says so itself.
 */
PG_FUNCTION_INFO_V1(es_overflow_filling_trigger);
Datum
es_overflow_filling_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Datum		position;
	bool		isnull;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BY_INSERT(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		elog(ERROR, "es_overflow_filling must be called as a row trigger on INSERT");
	/* The partitions have es_events' columns (core/event.h). */
	position = heap_getattr(trigdata->tg_trigtuple, EV_POSITION + 1, RelationGetDescr(trigdata->tg_relation),
							&isnull);
	es_overflow_filling(isnull ? PG_INT64_MAX : DatumGetInt64(position));
	return PointerGetDatum(trigdata->tg_trigtuple);
}

/*
 * es_catalog_changed: after any change to es_event_types, es_upcasters,
 * es_reducers, es_snapshot_policies, es_projections or es_clusters, however made (the registering
 * functions, an owner's DML, a data-only restore), send a relcache
 * invalidation for the table: at commit every backend empties the caches
 * built from it (store.c dispatches).  Plain DML sends none by itself.
 */
PG_FUNCTION_INFO_V1(es_catalog_changed);
Datum
es_catalog_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "es_catalog_changed must be called as a trigger");
	CacheInvalidateRelcache(trigdata->tg_relation);
	/* Trigger protocol: a null pointer, not an SQL NULL. */
	return PointerGetDatum(NULL);
}
