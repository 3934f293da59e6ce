/*-------------------------------------------------------------------------
 *
 * append_only.c
 *	  The statement trigger that makes the events table append-only.
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
#include "ultracore_es.h"

#include "commands/trigger.h"
#include "utils/rel.h"

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
	PG_RETURN_NULL();
}
