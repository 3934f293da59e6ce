/*-------------------------------------------------------------------------
 *
 * consumer.c
 *	  The consumer engine of the background worker: one batch of one
 *	  consumer at a time, in commit order, each event applied once.
 *
 * A consumer reads the events after its checkpoint, below the commit horizon
 * (as es_read_all does), applies them, and commits its new checkpoint in the
 * same transaction as the effects, together with one idempotency record per
 * event (es_handled).  A crash at any point loses nothing and repeats
 * nothing: either the batch committed, effects and checkpoint together, or
 * none of it did.
 *
 * A batch first runs without subtransactions (the fast path).  If an event's
 * handler fails, the batch is rolled back and run again with a
 * subtransaction per event (the careful path), up to the failing event,
 * whose failure is then recorded without calling the handler again:
 *
 *	- within its retries, the consumer stops there: the events before it
 *	  commit, and the failing event is tried again after the backoff
 *	  (backoff * 2^(attempt - 1)); nothing after it is delivered meanwhile,
 *	  so the handler sees events in commit order;
 *	- after the last retry it goes to es_dead_letters and the consumer moves
 *	  on, except for the later events of the same aggregate: they are parked
 *	  behind it (dead-lettered too, status 'parked'), so that the handler
 *	  never sees an aggregate's events out of order.  Retrying the dead
 *	  letter (es_retry_dead_letter) delivers it, then the parked ones, in
 *	  order.
 *
 * Handlers run as the role that registered them, in a restricted security
 * context.  Everything here runs in the worker, inside the transaction the
 * caller started, with an SPI connection and an active snapshot.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "delivery/consumer.h"

#include <math.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/typcache.h"
#include "utils/xid8.h"

#include "core/event.h"
#include "core/guc.h"
#include "core/step.h"
#include "core/store.h"
#include "delivery/stats.h"
#include "read/read.h"

typedef struct BatchEvent
{
	HeapTuple	tuple;			/* es_events row type, payload upcast */
	char	   *event_id;
	char	   *aggregate_id;
	char	   *event_type;
	FullTransactionId tx;
	int64		position;
	TimestampTz recorded_at;
} BatchEvent;

typedef struct Consumer
{
	const char *name;
	FullTransactionId ck_tx;
	int64		ck_pos;
	bool		paused;
	char	   *retry_event_id; /* NULL: no retry pending */
	int32		retry_attempts;
	TimestampTz retry_first_failed_at;
	TimestampTz retry_at;
	Oid			function;
	Datum		event_types;	/* text[], or 0 for all */
	int32		max_retries;
	int64		backoff_us;
	Oid			run_as;
	FmgrInfo	flinfo;
	TupleDesc	event_desc;
	/* the batch */
	BatchEvent *events;
	int			nevents;
	int			max_events;
	/* what the batch did */
	int			handled;
	int			retried_letters;	/* the first ones handled: dead letters */
	Datum	   *handled_ids;
	Datum	   *handled_positions;
	uint64	   *latencies;		/* filled after commit */
	FullTransactionId *handled_tx;
	TimestampTz *handled_recorded;
	char	   *last_error;
	bool		retry_changed;
} Consumer;

/* The event being applied on the fast path, for its error. */
static int	applying_index = -1;
static const BatchEvent *applying_event = NULL;

/* A handler's failure on the fast path, for the careful rerun. */
typedef struct FastFailure
{
	int			index;			/* in the batch; -1: none */
	char		event_id[ES_MAX_ID_LEN + 1];
	char	   *error;
} FastFailure;

/*
 * A consumer and what it calls: a handler, or an async projection.  A
 * consumer locked by someone else (a rebuild, a pause) is skipped until the
 * next pass rather than waited for, which would stall every consumer.
 */
static EsPlan load_plan = {
	"SELECT c.checkpoint_tx, c.checkpoint_position, c.paused, c.retry_event_id, c.retry_attempts,"
	"       c.retry_first_failed_at, c.retry_at, f.function, f.event_types, f.max_retries,"
	"       (pg_catalog.date_part('epoch', f.backoff) OPERATOR(pg_catalog.*) 1000000)::pg_catalog.int8,"
	"       f.run_as"
	"  FROM @extschema@.es_consumers c"
	"  JOIN (SELECT h.name, h.function, h.event_types, h.max_retries, h.backoff, h.run_as"
	"          FROM @extschema@.es_handlers h"
	"        UNION ALL"
	"        SELECT p.name, p.function, p.event_types, p.max_retries, p.backoff, p.run_as"
	"          FROM @extschema@.es_projections p WHERE p.mode OPERATOR(pg_catalog.=) 'async') f"
	"    ON f.name OPERATOR(pg_catalog.=) c.name"
	" WHERE c.name OPERATOR(pg_catalog.=) $1"
	"   FOR NO KEY UPDATE OF c SKIP LOCKED",
	1, {TEXTOID}
};

/* Driven by the batch's ids, one index probe each, however long the ledger. */
static EsPlan ledger_find_plan = {
	"SELECT h.event_id FROM pg_catalog.unnest($2) AS b(event_id)"
	"  JOIN @extschema@.es_handled h"
	"    ON h.consumer OPERATOR(pg_catalog.=) $1 AND h.event_id OPERATOR(pg_catalog.=) (b.event_id COLLATE \"C\")",
	2, {TEXTOID, TEXTARRAYOID}
};

static EsPlan ledger_add_plan = {
	"INSERT INTO @extschema@.es_handled (consumer, event_id, position)"
	" SELECT $1, e.id, e.pos"
	"   FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3)) AS e(id, pos)",
	3, {TEXTOID, TEXTARRAYOID, INT8ARRAYOID}
};

static EsPlan parked_plan = {
	"SELECT DISTINCT ON (d.aggregate_id) d.aggregate_id, d.id"
	"  FROM @extschema@.es_dead_letters d"
	" WHERE d.consumer OPERATOR(pg_catalog.=) $1 AND d.status OPERATOR(pg_catalog.<>) 'resolved'"
	" ORDER BY d.aggregate_id, d.tx_id, d.position",
	1, {TEXTOID}
};

static EsPlan dead_letter_plan = {
	"INSERT INTO @extschema@.es_dead_letters"
	" (consumer, event_id, tx_id, position, aggregate_id, event_type, status, parked_behind, error,"
	"  attempts, first_failed_at, last_failed_at)"
	" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
	" RETURNING id",
	12, {TEXTOID, TEXTOID, XID8OID, INT8OID, TEXTOID, TEXTOID, TEXTOID, INT8OID, TEXTOID, INT4OID,
	TIMESTAMPTZOID, TIMESTAMPTZOID}
};

static EsPlan save_plan = {
	"UPDATE @extschema@.es_consumers"
	"   SET checkpoint_tx = $2, checkpoint_position = $3,"
	"       events_processed = events_processed OPERATOR(pg_catalog.+) $4,"
	"       last_processed_at = CASE WHEN $4 OPERATOR(pg_catalog.>) 0 THEN pg_catalog.now() ELSE last_processed_at END,"
	"       retry_event_id = $5, retry_attempts = $6, retry_first_failed_at = $7, retry_at = $8,"
	"       last_error = COALESCE($9, last_error),"
	"       last_error_at = CASE WHEN $9 IS NULL THEN last_error_at ELSE pg_catalog.now() END"
	" WHERE name OPERATOR(pg_catalog.=) $1",
	9, {TEXTOID, XID8OID, INT8OID, INT8OID, TEXTOID, INT4OID, TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTOID}
};

static EsPlan retrying_plan = {
	"SELECT d.id, d.event_id, d.aggregate_id, d.attempts FROM @extschema@.es_dead_letters d"
	" WHERE d.consumer OPERATOR(pg_catalog.=) $1 AND d.status OPERATOR(pg_catalog.=) 'retrying'"
	" ORDER BY d.tx_id, d.position LIMIT 1",
	1, {TEXTOID}
};

static EsPlan resolved_plan = {
	"WITH done AS ("
	"  UPDATE @extschema@.es_dead_letters SET status = 'resolved', resolved_at = pg_catalog.now()"
	"   WHERE id OPERATOR(pg_catalog.=) $1 RETURNING consumer, aggregate_id)"
	" UPDATE @extschema@.es_dead_letters d SET status = 'retrying', parked_behind = NULL"
	"   FROM done"
	"  WHERE d.consumer OPERATOR(pg_catalog.=) done.consumer"
	"    AND d.aggregate_id OPERATOR(pg_catalog.=) done.aggregate_id"
	"    AND d.status OPERATOR(pg_catalog.=) 'parked'",
	1, {INT8OID}
};

static EsPlan still_dead_plan = {
	"WITH dead AS ("
	"  UPDATE @extschema@.es_dead_letters"
	"     SET status = 'dead', attempts = attempts OPERATOR(pg_catalog.+) 1, error = $2,"
	"         last_failed_at = pg_catalog.now()"
	"   WHERE id OPERATOR(pg_catalog.=) $1 RETURNING id, consumer, aggregate_id, tx_id, position)"
	" UPDATE @extschema@.es_dead_letters d SET status = 'parked', parked_behind = dead.id"
	"   FROM dead"
	"  WHERE d.consumer OPERATOR(pg_catalog.=) dead.consumer"
	"    AND d.aggregate_id OPERATOR(pg_catalog.=) dead.aggregate_id"
	"    AND d.status OPERATOR(pg_catalog.=) 'retrying'"
	"    AND ROW(d.tx_id, d.position) OPERATOR(pg_catalog.>) ROW(dead.tx_id, dead.position)",
	2, {INT8OID, TEXTOID}
};

/* es_read_rows callback: keep one event of the batch. */
static void
consumer_collect(Datum *values, bool *nulls, void *arg)
{
	Consumer   *c = (Consumer *) arg;
	BatchEvent *ev;

	if (c->nevents == c->max_events)
	{
		c->max_events *= 2;
		c->events = repalloc(c->events, sizeof(BatchEvent) * c->max_events);
	}
	ev = &c->events[c->nevents++];
	ev->tuple = heap_form_tuple(c->event_desc, values, nulls);
	ev->event_id = TextDatumGetCString(values[EV_EVENT_ID]);
	ev->aggregate_id = TextDatumGetCString(values[EV_AGGREGATE_ID]);
	ev->event_type = TextDatumGetCString(values[EV_EVENT_TYPE]);
	ev->tx = DatumGetFullTransactionId(values[EV_TX_ID]);
	ev->position = DatumGetInt64(values[EV_POSITION]);
	ev->recorded_at = DatumGetTimestampTz(values[EV_RECORDED_AT]);
}

/*
 * Lock the consumer's row and read its state; false when it is gone or paused.
 */
static bool
consumer_load(Consumer *c)
{
	Datum		arg = CStringGetTextDatum(c->name);
	HeapTuple	row;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;

	if (SPI_execute_plan(es_plan(&load_plan), &arg, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read consumer \"%s\"", c->name);
	if (SPI_processed == 0)
		return false;
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	c->ck_tx = DatumGetFullTransactionId(SPI_getbinval(row, desc, 1, &isnull));
	c->ck_pos = DatumGetInt64(SPI_getbinval(row, desc, 2, &isnull));
	c->paused = DatumGetBool(SPI_getbinval(row, desc, 3, &isnull));
	d = SPI_getbinval(row, desc, 4, &isnull);
	c->retry_event_id = isnull ? NULL : TextDatumGetCString(d);
	c->retry_attempts = DatumGetInt32(SPI_getbinval(row, desc, 5, &isnull));
	d = SPI_getbinval(row, desc, 6, &isnull);
	c->retry_first_failed_at = isnull ? 0 : DatumGetTimestampTz(d);
	d = SPI_getbinval(row, desc, 7, &isnull);
	c->retry_at = isnull ? 0 : DatumGetTimestampTz(d);
	c->function = DatumGetObjectId(SPI_getbinval(row, desc, 8, &isnull));
	d = SPI_getbinval(row, desc, 9, &isnull);
	c->event_types = isnull ? (Datum) 0 : PointerGetDatum(PG_DETOAST_DATUM_COPY(d));
	c->max_retries = DatumGetInt32(SPI_getbinval(row, desc, 10, &isnull));
	c->backoff_us = DatumGetInt64(SPI_getbinval(row, desc, 11, &isnull));
	c->run_as = DatumGetObjectId(SPI_getbinval(row, desc, 12, &isnull));
	SPI_freetuptable(SPI_tuptable);
	return !c->paused;
}

/*
 * Call the handler with one event, as the role that registered it, with the
 * settings it changes undone afterwards (they would leak into the next
 * consumer's calls, run as another role).
 */
static void
consumer_apply(Consumer *c, BatchEvent *ev)
{
	LOCAL_FCINFO(fcinfo, 1);
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;

	InitFunctionCallInfoData(*fcinfo, &c->flinfo, 1, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = HeapTupleGetDatum(ev->tuple);
	fcinfo->args[0].isnull = false;
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(c->run_as,
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	save_nestlevel = NewGUCNestLevel();
	(void) FunctionCallInvoke(fcinfo);
	AtEOXact_GUC(false, save_nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec_context);
}

/*
 * Errors that are not the handler's: a cancel of the worker (an operator's
 * pg_cancel_backend) or running out of memory must not use up an event's
 * attempts.
 */
static bool
consumer_error_is_handlers(ErrorData *edata)
{
	return edata->sqlerrcode != ERRCODE_QUERY_CANCELED && edata->sqlerrcode != ERRCODE_OUT_OF_MEMORY;
}

typedef struct Apply
{
	Consumer   *c;
	BatchEvent *ev;
} Apply;

static void
consumer_apply_step(void *arg)
{
	Apply	   *a = (Apply *) arg;

	consumer_apply(a->c, a->ev);
}

/* Apply one event in a subtransaction; false, with *error, when it failed. */
static bool
consumer_apply_careful(Consumer *c, BatchEvent *ev, char **error)
{
	Apply		a = {c, ev};
	ErrorData  *edata = es_step_in_subtransaction(consumer_apply_step, &a);

	if (edata == NULL)
		return true;
	if (!consumer_error_is_handlers(edata))
		ReThrowError(edata);
	*error = es_error_text(edata);
	FreeErrorData(edata);
	return false;
}

static void
consumer_handled(Consumer *c, BatchEvent *ev)
{
	c->handled_ids[c->handled] = CStringGetTextDatum(ev->event_id);
	c->handled_positions[c->handled] = Int64GetDatum(ev->position);
	c->handled_tx[c->handled] = ev->tx;
	c->handled_recorded[c->handled] = ev->recorded_at;
	c->handled++;
}

static int64
consumer_dead_letter(Consumer *c, BatchEvent *ev, const char *status, int64 behind,
					 const char *error, int32 attempts, TimestampTz first_failed)
{
	Datum		args[12];
	char		nulls[12];
	bool		isnull;
	int64		id;

	memset(nulls, ' ', sizeof(nulls));
	args[0] = CStringGetTextDatum(c->name);
	args[1] = CStringGetTextDatum(ev->event_id);
	args[2] = FullTransactionIdGetDatum(ev->tx);
	args[3] = Int64GetDatum(ev->position);
	args[4] = CStringGetTextDatum(ev->aggregate_id);
	args[5] = CStringGetTextDatum(ev->event_type);
	args[6] = CStringGetTextDatum(status);
	args[7] = Int64GetDatum(behind);
	nulls[7] = behind ? ' ' : 'n';
	args[8] = error ? CStringGetTextDatum(error) : (Datum) 0;
	nulls[8] = error ? ' ' : 'n';
	args[9] = Int32GetDatum(attempts);
	args[10] = TimestampTzGetDatum(first_failed);
	nulls[10] = first_failed ? ' ' : 'n';
	args[11] = TimestampTzGetDatum(GetCurrentTimestamp());
	nulls[11] = error ? ' ' : 'n';
	if (SPI_execute_plan(es_plan(&dead_letter_plan), args, nulls, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not record a dead letter of consumer \"%s\"", c->name);
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_freetuptable(SPI_tuptable);
	return id;
}

/* The aggregates with an unresolved dead letter, and the first of each. */
static HTAB *
consumer_parked(Consumer *c)
{
	HASHCTL		ctl;
	HTAB	   *parked;
	Datum		arg = CStringGetTextDatum(c->name);
	uint64		i;

	ctl.keysize = ES_MAX_ID_LEN + 1;
	ctl.entrysize = ES_MAX_ID_LEN + 1 + sizeof(int64);
	ctl.hcxt = CurrentMemoryContext;
	parked = hash_create("ultracore_es parked aggregates", 16, &ctl, HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	if (SPI_execute_plan(es_plan(&parked_plan), &arg, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the dead letters of consumer \"%s\"", c->name);
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		char	   *id = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		char	   *entry = hash_search(parked, id, HASH_ENTER, NULL);

		*(int64 *) (entry + ES_MAX_ID_LEN + 1) =
			DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
	}
	SPI_freetuptable(SPI_tuptable);
	return parked;
}

static void
consumer_park(HTAB *parked, const char *aggregate_id, int64 dead_letter)
{
	char	   *entry = hash_search(parked, aggregate_id, HASH_ENTER, NULL);

	*(int64 *) (entry + ES_MAX_ID_LEN + 1) = dead_letter;
}

/* The ids of the batch's events the consumer already applied. */
static HTAB *
consumer_ledger(Consumer *c)
{
	HASHCTL		ctl;
	HTAB	   *seen;
	Datum		args[2];
	Datum	   *ids = palloc(sizeof(Datum) * Max(c->nevents, 1));
	uint64		i;

	ctl.keysize = ES_MAX_ID_LEN + 1;
	ctl.entrysize = ES_MAX_ID_LEN + 1;
	ctl.hcxt = CurrentMemoryContext;
	seen = hash_create("ultracore_es handled events", 16, &ctl, HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	for (i = 0; i < (uint64) c->nevents; i++)
		ids[i] = CStringGetTextDatum(c->events[i].event_id);
	args[0] = CStringGetTextDatum(c->name);
	args[1] = PointerGetDatum(construct_array(ids, c->nevents, TEXTOID, -1, false, TYPALIGN_INT));
	if (SPI_execute_plan(es_plan(&ledger_find_plan), args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the ledger of consumer \"%s\"", c->name);
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		hash_search(seen, TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull)),
					HASH_ENTER, NULL);
	}
	SPI_freetuptable(SPI_tuptable);
	return seen;
}

/*
 * Deliver the dead letters marked for retry, in commit order, each in a
 * subtransaction: a success resolves it and releases the events parked
 * behind it (retried next, in order); a failure parks the remaining ones of
 * its aggregate behind it again.
 */
static void
consumer_retry_dead_letters(Consumer *c)
{
	int			budget = es_worker_batch_size;

	while (budget-- > 0)
	{
		Datum		arg = CStringGetTextDatum(c->name);
		Datum		args[2];
		bool		isnull;
		int64		id;
		char	   *event_id;
		char	   *error = NULL;
		HTAB	   *seen;

		CHECK_FOR_INTERRUPTS();
		if (SPI_execute_plan(es_plan(&retrying_plan), &arg, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read the dead letters of consumer \"%s\"", c->name);
		if (SPI_processed == 0)
			break;
		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		event_id = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
		SPI_freetuptable(SPI_tuptable);

		c->nevents = 0;
		es_read_event(event_id, false, consumer_collect, c);
		args[0] = Int64GetDatum(id);
		if (c->nevents == 1)
		{
			seen = consumer_ledger(c);
			if (hash_search(seen, event_id, HASH_FIND, NULL) != NULL ||
				consumer_apply_careful(c, &c->events[0], &error))
			{
				if (hash_search(seen, event_id, HASH_FIND, NULL) == NULL)
					consumer_handled(c, &c->events[0]);
				if (SPI_execute_plan(es_plan(&resolved_plan), args, NULL, false, 0) != SPI_OK_UPDATE)
					elog(ERROR, "could not resolve dead letter %lld", (long long) id);
				continue;
			}
		}
		else
			error = pstrdup("the event is no longer in the store");
		args[1] = CStringGetTextDatum(error);
		if (SPI_execute_plan(es_plan(&still_dead_plan), args, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not update dead letter %lld", (long long) id);
	}
	c->nevents = 0;
}

/*
 * Apply the batch.  careful: one subtransaction per event; failed: the fast
 * path already saw that event fail, so its failure is recorded without
 * calling the handler again (if the rerun read the same event there).
 * Returns the number of events of the batch the checkpoint passed.
 */
static int
consumer_apply_batch(Consumer *c, bool careful, const FastFailure *failed)
{
	HTAB	   *parked = consumer_parked(c);
	HTAB	   *seen = consumer_ledger(c);
	TimestampTz now = GetCurrentTimestamp();
	int			done = 0;
	int			i;

	/* A retry of an event the consumer no longer takes first is over. */
	if (c->retry_event_id != NULL &&
		(c->nevents == 0 || strcmp(c->events[0].event_id, c->retry_event_id) != 0))
	{
		c->retry_event_id = NULL;
		c->retry_changed = true;
	}

	for (i = 0; i < c->nevents; i++)
	{
		BatchEvent *ev = &c->events[i];
		char	   *entry = hash_search(parked, ev->aggregate_id, HASH_FIND, NULL);
		char	   *error = NULL;
		bool		same_event;
		int32		attempts;
		TimestampTz first_failed;

		CHECK_FOR_INTERRUPTS();
		if (entry != NULL)
		{
			/* Behind a dead letter of its aggregate: park it too. */
			int64		behind = *(int64 *) (entry + ES_MAX_ID_LEN + 1);

			(void) consumer_dead_letter(c, ev, "parked", behind, NULL, 0, 0);
			done = i + 1;
			continue;
		}
		if (hash_search(seen, ev->event_id, HASH_FIND, NULL) != NULL)
		{
			done = i + 1;	/* applied before: the ledger says so */
			continue;
		}
		if (!careful)
		{
			applying_index = i;
			applying_event = ev;
			consumer_apply(c, ev);
			applying_index = -1;
			consumer_handled(c, ev);
			done = i + 1;
			continue;
		}
		if (failed != NULL && i == failed->index && strcmp(ev->event_id, failed->event_id) == 0)
			error = pstrdup(failed->error);
		else if (consumer_apply_careful(c, ev, &error))
		{
			consumer_handled(c, ev);
			done = i + 1;
			if (c->retry_event_id != NULL && strcmp(c->retry_event_id, ev->event_id) == 0)
			{
				c->retry_event_id = NULL;
				c->retry_changed = true;
			}
			continue;
		}

		/* The handler failed on this event. */
		same_event = c->retry_event_id != NULL && strcmp(c->retry_event_id, ev->event_id) == 0;
		attempts = same_event ? c->retry_attempts + 1 : 1;
		first_failed = same_event ? c->retry_first_failed_at : now;
		c->last_error = error;
		c->retry_changed = true;
		if (attempts <= c->max_retries)
		{
			/* Try it again later; nothing after it meanwhile. */
			c->retry_event_id = ev->event_id;
			c->retry_attempts = attempts;
			c->retry_first_failed_at = first_failed;
			c->retry_at = now + (TimestampTz) (c->backoff_us * ldexp(1.0, attempts - 1));
			break;
		}
		consumer_park(parked, ev->aggregate_id,
					  consumer_dead_letter(c, ev, "dead", 0, error, attempts, first_failed));
		c->retry_event_id = NULL;
		done = i + 1;
	}
	return done;
}

/*
 * Commit the consumer's progress: the ledger records of the events applied,
 * the new checkpoint, the retry state.  The checkpoint passes the first done
 * events; when the whole batch was done and it was not full, it moves on to
 * the horizon, past the events the consumer's filter skipped.
 */
static void
consumer_save(Consumer *c, int done, bool whole_batch_read, FullTransactionId horizon)
{
	Datum		args[9];
	char		nulls[9];
	FullTransactionId ck_tx = c->ck_tx;
	int64		ck_pos = c->ck_pos;

	if (c->handled > 0)
	{
		Datum		largs[3];

		largs[0] = CStringGetTextDatum(c->name);
		largs[1] = PointerGetDatum(construct_array(c->handled_ids, c->handled, TEXTOID, -1, false, TYPALIGN_INT));
		largs[2] = PointerGetDatum(construct_array(c->handled_positions, c->handled, INT8OID, 8,
												   FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		if (SPI_execute_plan(es_plan(&ledger_add_plan), largs, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not write the ledger of consumer \"%s\"", c->name);
	}
	if (done > 0)
	{
		ck_tx = c->events[done - 1].tx;
		ck_pos = c->events[done - 1].position;
	}
	if (done == c->nevents && whole_batch_read && c->retry_event_id == NULL &&
		FullTransactionIdPrecedes(ck_tx, horizon))
	{
		ck_tx = horizon;
		ck_pos = 0;
	}

	memset(nulls, ' ', sizeof(nulls));
	args[0] = CStringGetTextDatum(c->name);
	args[1] = FullTransactionIdGetDatum(ck_tx);
	args[2] = Int64GetDatum(ck_pos);
	args[3] = Int64GetDatum(c->handled);
	args[4] = c->retry_event_id ? CStringGetTextDatum(c->retry_event_id) : (Datum) 0;
	nulls[4] = c->retry_event_id ? ' ' : 'n';
	args[5] = Int32GetDatum(c->retry_event_id ? c->retry_attempts : 0);
	args[6] = TimestampTzGetDatum(c->retry_first_failed_at);
	nulls[6] = c->retry_event_id ? ' ' : 'n';
	args[7] = TimestampTzGetDatum(c->retry_at);
	nulls[7] = c->retry_event_id ? ' ' : 'n';
	args[8] = c->last_error ? CStringGetTextDatum(c->last_error) : (Datum) 0;
	nulls[8] = c->last_error ? ' ' : 'n';
	if (SPI_execute_plan(es_plan(&save_plan), args, nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not save the checkpoint of consumer \"%s\"", c->name);
}

/*
 * Commit-to-applied latencies of the last batch, kept across its commit: the
 * events count as applied when the batch commits.
 */
static char latency_consumer[NAMEDATALEN];
static TimestampTz *latency_commit_times = NULL;
static int	latency_count = 0;
static int	latency_size = 0;

static void
consumer_keep_latencies(Consumer *c)
{
	int			i;

	if (c->handled > latency_size)
	{
		latency_size = Max(c->handled, 1024);
		if (latency_commit_times)
			pfree(latency_commit_times);
		latency_commit_times = MemoryContextAlloc(TopMemoryContext, sizeof(TimestampTz) * latency_size);
	}
	/* Dead letters retried are late by design: they would skew the latencies. */
	strlcpy(latency_consumer, c->name, sizeof(latency_consumer));
	latency_count = 0;
	for (i = c->retried_letters; i < c->handled; i++)
		latency_commit_times[latency_count++] = es_stats_commit_time(c->handled_tx[i], c->handled_recorded[i]);
}

static void
consumer_publish_latencies(void)
{
	TimestampTz now = GetCurrentTimestamp();
	uint64	   *us;
	int			i;

	if (latency_count == 0)
		return;
	us = palloc(sizeof(uint64) * latency_count);
	for (i = 0; i < latency_count; i++)
		us[i] = now > latency_commit_times[i] ? (uint64) (now - latency_commit_times[i]) : 0;
	es_stats_record_applied(latency_consumer, latency_count, us, now);
	pfree(us);
	latency_count = 0;
}

/*
 * One pass over one consumer, in the current transaction: retries of dead
 * letters, then the next batch of events.  Returns the number of events the
 * batch read (the caller runs another batch while batches come back full);
 * *next_due is lowered to the time a pending retry falls due.  On the fast
 * path a handler's error propagates, with applying_index set to the index of
 * the failing event.
 */
static int
consumer_pass(const char *name, bool careful, const FastFailure *failed, TimestampTz *next_due)
{
	Consumer	c;
	EsStore    *s = es_store_current();
	ConstraintsSetStmt *immediate = makeNode(ConstraintsSetStmt);
	FullTransactionId horizon;
	Datum		args[6];
	char		nulls[6] = {' ', ' ', ' ', 'n', ' ', ' '};
	int			done = 0;
	int			nread = 0;
	bool		retry_due;

	memset(&c, 0, sizeof(c));
	c.name = name;
	if (s == NULL || !consumer_load(&c))
		return 0;
	retry_due = (c.retry_event_id == NULL || c.retry_at <= GetCurrentTimestamp());
	if (c.retry_event_id != NULL)
		careful = true;			/* the retried event goes first: one call per attempt */

	/*
	 * Deferred constraints are checked as each handler call ends, so that
	 * their failure is the event's, not the commit's.
	 */
	immediate->deferred = false;
	AfterTriggerSetState(immediate);

	fmgr_info(c.function, &c.flinfo);
	c.event_desc = lookup_rowtype_tupdesc_copy(s->events_rowtype, -1);
	c.max_events = Max(es_worker_batch_size, 1);
	c.events = palloc(sizeof(BatchEvent) * c.max_events);
	/* room for the retried dead letters and the batch */
	c.handled_ids = palloc(sizeof(Datum) * 2 * c.max_events);
	c.handled_positions = palloc(sizeof(Datum) * 2 * c.max_events);
	c.handled_tx = palloc(sizeof(FullTransactionId) * 2 * c.max_events);
	c.handled_recorded = palloc(sizeof(TimestampTz) * 2 * c.max_events);

	consumer_retry_dead_letters(&c);
	c.retried_letters = c.handled;

	horizon = es_commit_horizon_of(GetActiveSnapshot());
	if (retry_due)
	{
		args[0] = FullTransactionIdGetDatum(c.ck_tx);
		args[1] = Int64GetDatum(c.ck_pos);
		args[2] = FullTransactionIdGetDatum(horizon);
		args[4] = c.event_types;
		nulls[4] = c.event_types ? ' ' : 'n';
		args[5] = Int32GetDatum(es_worker_batch_size);
		es_read_rows(es_commit_order_plan(), args, nulls, true, false, 0, consumer_collect, &c);
		nread = c.nevents;
		done = consumer_apply_batch(&c, careful, failed);
	}
	consumer_save(&c, done, retry_due && nread < es_worker_batch_size, horizon);
	if (c.retry_event_id != NULL)
		*next_due = Min(*next_due, c.retry_at);
	consumer_keep_latencies(&c);
	return nread;
}

/*
 * es_consumer_run: one batch of consumer name, in its own transaction
 * (started and committed here), rerun on the careful path when a handler
 * fails.  Returns the number of events read.  Errors other than a handler's
 * propagate, with the transaction still open for the caller to abort.
 */
int
es_consumer_run(const char *name, TimestampTz *next_due)
{
	MemoryContext cxt = CurrentMemoryContext;
	FastFailure failed;
	volatile int nread = 0;

	failed.index = -1;
	latency_count = 0;
	applying_index = -1;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	PG_TRY();
	{
		nread = consumer_pass(name, false, NULL, next_due);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		if (applying_index < 0 || !consumer_error_is_handlers(edata))
			PG_RE_THROW();
		FlushErrorState();
		failed.index = applying_index;
		strlcpy(failed.event_id, applying_event->event_id, sizeof(failed.event_id));
		failed.error = es_error_text(edata);
		applying_index = -1;
		FreeErrorData(edata);
		AbortOutOfAnyTransaction();
	}
	PG_END_TRY();

	if (failed.index >= 0)
	{
		/* The same batch again, one subtransaction per event. */
		latency_count = 0;
		StartTransactionCommand();
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		PushActiveSnapshot(GetTransactionSnapshot());
		nread = consumer_pass(name, true, &failed, next_due);
	}
	PopActiveSnapshot();
	if (SPI_finish() != SPI_OK_FINISH)
		elog(ERROR, "SPI_finish failed");
	CommitTransactionCommand();
	consumer_publish_latencies();
	MemoryContextSwitchTo(cxt);
	return nread;
}
