/*-------------------------------------------------------------------------
 *
 * consumer.c
 *	  The consumer engine of the delivery workers: one batch of one
 *	  consumer (or of one segment of it, segment.c) at a time, in commit
 *	  order, each event applied once.
 *
 * A consumer reads the events after its checkpoint, below the commit horizon
 * (as es_read_all does) or, while it is live, in the commit log (as
 * es_read_log does, commit_point.c), applies them, and commits its new checkpoint in the
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
 *	  behind it (dead-lettered too, status 'parked', dead_letter.c), so that
 *	  the handler never sees an aggregate's events out of order.  Retrying
 *	  the dead letter (es_retry_dead_letter) delivers it, then the parked
 *	  ones, in order.
 *
 * A built-in read model's projection function is not called per event: the
 * consumer folds the events in C, into a row per aggregate of the batch,
 * loaded at its first event and written once after the batch's last
 * (consumer_fold).  The row's version is the model's ledger (an event at or
 * below it was folded before and is skipped), so such a consumer writes no
 * es_handled records.  A failure is the event being folded, or, when a row
 * is written, its aggregate's last event in the batch; the careful path then
 * calls the projection function, one event at a time.
 *
 * Handlers run as the role that registered them, in a restricted security
 * context, and with their timeout, if they have one: a call that runs past
 * it is cancelled and counts as a failed attempt.  Everything here runs in
 * a delivery worker, which holds the consumer's claim (worker.c), inside
 * the transaction es_consumer_run starts, with an SPI connection and an
 * active snapshot.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "delivery/consumer_internal.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"
#include "utils/typcache.h"
#include "utils/xid8.h"

#include "core/event.h"
#include "core/guc.h"
#include "core/horizon.h"
#include "core/step.h"
#include "core/store.h"
#include "delivery/stats.h"
#include "delivery/worker.h"
#include "read/read.h"

/* The event being applied on the fast path, for its error. */
static int	applying_index = -1;
static const BatchEvent *applying_event = NULL;
static char applying_consumer[NAMEDATALEN];
static int64 applying_timeout_ms = 0;

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
#define LOAD_FUNCTION \
	"       f.function, f.event_types, f.max_retries," \
	"       (pg_catalog.date_part('epoch', f.backoff) OPERATOR(pg_catalog.*) 1000000)::pg_catalog.int8," \
	"       f.run_as," \
	"       COALESCE((pg_catalog.date_part('epoch', f.timeout) OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8, 0)," \
	"       f.parallelism, c.generation"
#define LOAD_FROM \
	"  FROM @extschema@.es_consumers c" \
	"  JOIN (SELECT h.name, h.function, h.event_types, h.max_retries, h.backoff, h.run_as, h.timeout," \
	"               h.parallelism" \
	"          FROM @extschema@.es_handlers h" \
	"        UNION ALL" \
	"        SELECT p.name, p.function, p.event_types, p.max_retries, p.backoff, p.run_as, p.timeout, 1" \
	"          FROM @extschema@.es_projections p WHERE p.mode OPERATOR(pg_catalog.=) 'async') f" \
	"    ON f.name OPERATOR(pg_catalog.=) c.name"

static EsPlan load_plan = {
	"SELECT c.checkpoint_tx, c.checkpoint_position, c.paused, c.retry_event_id, c.retry_attempts,"
	"       c.retry_first_failed_at, c.retry_at," LOAD_FUNCTION ","
	"       c.log_seq, c.log_position, c.log_skip, c.log_skip_until"
	LOAD_FROM
	" WHERE c.name OPERATOR(pg_catalog.=) $1"
	"   FOR NO KEY UPDATE OF c SKIP LOCKED",
	1, {TEXTOID}
};

/*
 * A segment: its own row, locked; the consumer's row locked FOR KEY SHARE,
 * so that a new split (which locks it FOR UPDATE) waits for the batch, and
 * the other segments' batches go on.
 */
static EsPlan load_segment_plan = {
	"SELECT s.checkpoint_tx, s.checkpoint_position, c.paused, s.retry_event_id, s.retry_attempts,"
	"       s.retry_first_failed_at, s.retry_at," LOAD_FUNCTION ","
	"       s.log_seq, s.log_position, s.log_skip, s.log_skip_until"
	LOAD_FROM
	"  JOIN @extschema@.es_consumer_segments s"
	"    ON s.consumer OPERATOR(pg_catalog.=) c.name AND s.generation OPERATOR(pg_catalog.=) c.generation"
	"   AND s.segment OPERATOR(pg_catalog.=) $2"
	" WHERE c.name OPERATOR(pg_catalog.=) $1"
	"   FOR NO KEY UPDATE OF s SKIP LOCKED FOR KEY SHARE OF c SKIP LOCKED",
	2, {TEXTOID, INT4OID}
};

/* Driven by the batch's ids, one index probe each, however long the ledger. */
/*
 * One index probe per event of the batch, whatever the statistics say: as
 * a join, a plan made while the ledger's statistics lag behind its growth
 * read every ledger row of the consumer into a hash table at every batch
 * (delivery slowed as the ledger grew: a 300,000-event replay ran at 15,400
 * events/s, and at 48,000 with the probes).
 */
static EsPlan ledger_find_plan = {
	"SELECT b.event_id FROM pg_catalog.unnest($2) AS b(event_id)"
	" CROSS JOIN LATERAL (SELECT FROM @extschema@.es_handled h"
	"  WHERE h.consumer OPERATOR(pg_catalog.=) $1"
	"    AND h.event_id OPERATOR(pg_catalog.=) (b.event_id COLLATE \"C\") LIMIT 1) found",
	2, {TEXTOID, TEXTARRAYOID}
};

static EsPlan ledger_add_plan = {
	"INSERT INTO @extschema@.es_handled (consumer, event_id, position)"
	" SELECT $1, e.id, e.pos"
	"   FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3)) AS e(id, pos)",
	3, {TEXTOID, TEXTARRAYOID, INT8ARRAYOID}
};

static EsPlan save_plan = {
	"UPDATE @extschema@.es_consumers"
	"   SET checkpoint_tx = $2, checkpoint_position = $3,"
	"       events_processed = events_processed OPERATOR(pg_catalog.+) $4,"
	"       last_processed_at = CASE WHEN $4 OPERATOR(pg_catalog.>) 0 THEN pg_catalog.now() ELSE last_processed_at END,"
	"       retry_event_id = $5, retry_attempts = $6, retry_first_failed_at = $7, retry_at = $8,"
	"       last_error = COALESCE($9, last_error),"
	"       last_error_at = CASE WHEN $9 IS NULL THEN last_error_at ELSE pg_catalog.now() END,"
	"       log_seq = $12, log_position = $13, log_skip = $14, log_skip_until = $15"
	" WHERE name OPERATOR(pg_catalog.=) $1",
	15, {TEXTOID, XID8OID, INT8OID, INT8OID, TEXTOID, INT4OID, TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTOID,
	INT4OID, INT4OID, INT8OID, INT8OID, INT8ARRAYOID, XID8OID}
};

/* A segment's progress on its row; the last error on the consumer's. */
static EsPlan save_segment_plan = {
	"WITH s AS ("
	"  UPDATE @extschema@.es_consumer_segments"
	"     SET checkpoint_tx = $2, checkpoint_position = $3,"
	"         events_processed = events_processed OPERATOR(pg_catalog.+) $4,"
	"         last_processed_at = CASE WHEN $4 OPERATOR(pg_catalog.>) 0 THEN pg_catalog.now() ELSE last_processed_at END,"
	"         retry_event_id = $5, retry_attempts = $6, retry_first_failed_at = $7, retry_at = $8,"
	"         log_seq = $12, log_position = $13, log_skip = $14, log_skip_until = $15"
	"   WHERE consumer OPERATOR(pg_catalog.=) $1 AND generation OPERATOR(pg_catalog.=) $10"
	"     AND segment OPERATOR(pg_catalog.=) $11 RETURNING 1)"
	" UPDATE @extschema@.es_consumers SET last_error = $9, last_error_at = pg_catalog.now()"
	"  WHERE name OPERATOR(pg_catalog.=) $1 AND $9 IS NOT NULL AND EXISTS (SELECT FROM s)",
	15, {TEXTOID, XID8OID, INT8OID, INT8OID, TEXTOID, INT4OID, TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTOID,
	INT4OID, INT4OID, INT8OID, INT8OID, INT8ARRAYOID, XID8OID}
};

/* es_consumer_collect: es_read_rows callback: keep one event of the batch. */
void
es_consumer_collect(Datum *values, bool *nulls, void *arg)
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
	ev->seq = c->read.seq;
	ev->recorded_at = DatumGetTimestampTz(values[EV_RECORDED_AT]);
}

/*
 * Lock the unit's row and read its state; false when it is gone, paused, or
 * no longer split this way (a new split since the unit was listed).
 */
static bool
consumer_load(Consumer *c)
{
	Datum		args[2];
	HeapTuple	row;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;
	int			parallelism;

	args[0] = CStringGetTextDatum(c->name);
	args[1] = Int32GetDatum(c->segment);
	if (SPI_execute_plan(es_plan(c->segments > 1 ? &load_segment_plan : &load_plan), args, NULL, false, 1)
		!= SPI_OK_SELECT)
		elog(ERROR, "could not read consumer \"%s\"", c->name);
	if (SPI_processed == 0)
		return false;
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	es_commit_point_from_row(&c->point, row, desc, 1, 16);
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
	c->timeout_ms = DatumGetInt64(SPI_getbinval(row, desc, 13, &isnull));
	parallelism = DatumGetInt32(SPI_getbinval(row, desc, 14, &isnull));
	c->generation = DatumGetInt32(SPI_getbinval(row, desc, 15, &isnull));
	SPI_freetuptable(SPI_tuptable);
	return !c->paused && parallelism == c->segments;
}

/*
 * Handler timeouts.  The timer sets a cancel (as statement_timeout does)
 * only while a handler runs; a cancel that arrives after the handler
 * returned is dropped.  The error it raises is the handler's failure.
 */
static TimeoutId handler_timeout = MAX_TIMEOUTS;

/* The event row the handler being called was given, while it runs. */
static Datum applying_datum = (Datum) 0;
static volatile sig_atomic_t handler_running = false;
static volatile sig_atomic_t handler_timed_out = false;

static void
handler_timeout_fired(void)
{
	if (!handler_running)
		return;
	handler_timed_out = true;
	QueryCancelPending = true;
	InterruptPending = true;
	SetLatch(MyLatch);
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
	handler_timed_out = false;
	if (c->timeout_ms > 0)
	{
		if (handler_timeout == MAX_TIMEOUTS)
			handler_timeout = RegisterTimeout(USER_TIMEOUT, handler_timeout_fired);
		handler_running = true;
		enable_timeout_after(handler_timeout, (int) Min(c->timeout_ms, INT_MAX));
	}
	applying_datum = fcinfo->args[0].value;
	PG_TRY();
	{
		(void) FunctionCallInvoke(fcinfo);
	}
	PG_FINALLY();
	{
		applying_datum = (Datum) 0;
		if (c->timeout_ms > 0)
		{
			handler_running = false;
			disable_timeout(handler_timeout, false);
		}

		/*
		 * It fired as the handler returned or failed otherwise: the cancel
		 * is ours, and moot (handler_timed_out stays, for the error).
		 */
		if (handler_timed_out)
			QueryCancelPending = false;
	}
	PG_END_TRY();
	handler_timed_out = false;
	AtEOXact_GUC(false, save_nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec_context);
}

/*
 * es_consumer_delivering: whether event (a function's argument) is the
 * stored event the engine is passing to a consumer's function now, rather
 * than a row its caller made up.
 */
bool
es_consumer_delivering(Datum event)
{
	return applying_datum != (Datum) 0 && event == applying_datum;
}

/*
 * The one error that is not the handler's: a cancel of the worker (an
 * operator's pg_cancel_backend), which must not use up an event's attempts.
 * A cancel is turned into an error by ProcessInterrupts alone; a 57014
 * raised anywhere else is the handler's own (a remote server's statement
 * timeout passed on by postgres_fdw or dblink, a RAISE), and so is running
 * out of memory: else an event that fails so every time aborted its batch
 * at every pass, neither retried with a backoff nor dead-lettered.  A
 * cancel by the handler's timeout is the handler's, and says so.
 */
static bool
consumer_error_is_handlers(const char *name, int64 timeout_ms, ErrorData *edata)
{
	if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED && handler_timed_out)
	{
		handler_timed_out = false;
		edata->message = psprintf("consumer \"%s\" ran past its timeout of " INT64_FORMAT " ms",
								  name, timeout_ms);
		return true;
	}
	return edata->sqlerrcode != ERRCODE_QUERY_CANCELED ||
		edata->funcname == NULL || strcmp(edata->funcname, "ProcessInterrupts") != 0;
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

/*
 * es_consumer_apply_careful: apply one event in a subtransaction; false,
 * with *error, when the handler failed.  Other errors propagate.
 */
bool
es_consumer_apply_careful(Consumer *c, BatchEvent *ev, char **error)
{
	Apply		a = {c, ev};
	ErrorData  *edata = es_step_in_subtransaction(consumer_apply_step, &a);

	if (edata == NULL)
		return true;
	if (!consumer_error_is_handlers(c->name, c->timeout_ms, edata))
		ReThrowError(edata);
	*error = es_error_text(edata);
	FreeErrorData(edata);
	return false;
}

/* es_consumer_handled: ev was applied: it goes to the ledger. */
void
es_consumer_handled(Consumer *c, BatchEvent *ev)
{
	c->handled_ids[c->handled] = CStringGetTextDatum(ev->event_id);
	c->handled_positions[c->handled] = Int64GetDatum(ev->position);
	c->handled_tx[c->handled] = ev->tx;
	c->handled_recorded[c->handled] = ev->recorded_at;
	c->handled++;
}

/* es_consumer_ledger: the ids of the batch's events the consumer already applied. */
HTAB *
es_consumer_ledger(Consumer *c)
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
	if (c->model != NULL)
		return seen;			/* the model's rows are its ledger */
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

/* The event being applied on the fast path is the index-th of c's batch. */
static void
consumer_applying(Consumer *c, int index)
{
	applying_index = index;
	applying_event = &c->events[index];
	strlcpy(applying_consumer, c->name, sizeof(applying_consumer));
	applying_timeout_ms = c->timeout_ms;
}

/* A read model's row the batch folds into: its aggregate's events, in version order. */
typedef struct FoldRow
{
	char		aggregate_id[ES_MAX_ID_LEN + 1];
	EsReadModelRow *row;
	int			last;			/* index in the batch of its last event */
} FoldRow;

/* Fold the index-th event of the batch into its read model's row (see the file header). */
static void
consumer_fold(Consumer *c, int index)
{
	BatchEvent *ev = &c->events[index];
	FoldRow    *f;
	bool		found;

	if (c->fold_rows == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = ES_MAX_ID_LEN + 1;
		ctl.entrysize = sizeof(FoldRow);
		ctl.hcxt = CurrentMemoryContext;
		c->fold_rows = hash_create("ultracore_es read model rows", 256, &ctl,
								   HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	}
	consumer_applying(c, index);
	f = hash_search(c->fold_rows, ev->aggregate_id, HASH_ENTER, &found);
	if (!found)
	{
		/* The rows are the extension's, read and written as a projection function does. */
		EsRole		was = es_become_owner(es_store_resolved());

		f->row = es_read_model_begin(c->model, es_store_resolved(), ev->aggregate_id);
		es_become(was);
	}
	(void) es_read_model_fold_event(f->row, c->event_desc, ev->tuple);
	f->last = index;
	applying_index = -1;
}

/*
 * Write the rows the batch folded into, each once; a failure to write one is
 * its aggregate's last event's.
 */
static void
consumer_fold_end(Consumer *c)
{
	HASH_SEQ_STATUS seq;
	FoldRow    *f;

	if (c->fold_rows == NULL)
		return;
	hash_seq_init(&seq, c->fold_rows);
	while ((f = hash_seq_search(&seq)) != NULL)
	{
		EsRole		was;

		consumer_applying(c, f->last);
		was = es_become_owner(es_store_resolved());
		(void) es_read_model_end(f->row);
		es_become(was);
		applying_index = -1;
	}
	hash_destroy(c->fold_rows);
	c->fold_rows = NULL;
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
	HTAB	   *parked = es_dead_letter_parked(c);
	HTAB	   *seen = es_consumer_ledger(c);
	TimestampTz now = GetCurrentTimestamp();
	int			done = 0;
	int			i;

	/* A retry of an event the consumer no longer takes first is over. */
	if (c->retry_event_id != NULL &&
		(c->nevents == 0 || strcmp(c->events[0].event_id, c->retry_event_id) != 0))
		c->retry_event_id = NULL;

	for (i = 0; i < c->nevents; i++)
	{
		BatchEvent *ev = &c->events[i];
		int64		behind = es_dead_letter_parked_behind(parked, ev->aggregate_id);
		char	   *error = NULL;
		bool		same_event;
		int32		attempts;
		TimestampTz first_failed;

		CHECK_FOR_INTERRUPTS();
		if (es_segment_fenced(c, ev))
		{
			done = i + 1;	/* handled by an earlier split of the consumer */
			continue;
		}
		if (behind != 0)
		{
			/* Behind a dead letter of its aggregate: park it too. */
			(void) es_dead_letter_add(c, ev, "parked", behind, NULL, 0, 0);
			done = i + 1;
			continue;
		}
		if (hash_search(seen, ev->event_id, HASH_FIND, NULL) != NULL)
		{
			done = i + 1;	/* applied before: the ledger says so */
			continue;
		}
		if (!careful && c->model != NULL)
		{
			consumer_fold(c, i);
			es_consumer_handled(c, ev);
			done = i + 1;
			continue;
		}
		if (!careful)
		{
			consumer_applying(c, i);
			consumer_apply(c, ev);
			applying_index = -1;
			es_consumer_handled(c, ev);
			done = i + 1;
			continue;
		}
		if (failed != NULL && i == failed->index && strcmp(ev->event_id, failed->event_id) == 0)
			error = pstrdup(failed->error);
		else if (es_consumer_apply_careful(c, ev, &error))
		{
			es_consumer_handled(c, ev);
			done = i + 1;
			if (c->retry_event_id != NULL && strcmp(c->retry_event_id, ev->event_id) == 0)
				c->retry_event_id = NULL;
			continue;
		}

		/* The handler failed on this event. */
		same_event = c->retry_event_id != NULL && strcmp(c->retry_event_id, ev->event_id) == 0;
		attempts = same_event ? c->retry_attempts + 1 : 1;
		first_failed = same_event ? c->retry_first_failed_at : now;
		c->last_error = error;
		if (attempts <= c->max_retries)
		{
			/* Try it again later; nothing after it meanwhile. */
			c->retry_event_id = ev->event_id;
			c->retry_attempts = attempts;
			c->retry_first_failed_at = first_failed;
			c->retry_at = now + es_retry_delay_us(c->backoff_us, attempts);
			break;
		}
		es_dead_letter_park(parked, ev->aggregate_id,
							es_dead_letter_add(c, ev, "dead", 0, error, attempts, first_failed));
		c->retry_event_id = NULL;
		done = i + 1;
	}
	consumer_fold_end(c);
	return done;
}

/*
 * Commit the consumer's progress: the ledger records of the events applied,
 * the new checkpoint, the retry state.  The checkpoint passes the first done
 * events; when the whole batch was done and it was not full, it moves on to
 * the horizon (in the log: to where the read stopped), past the events the
 * consumer's filter skipped.
 */
static void
consumer_save(Consumer *c, int done, bool whole_batch_read, FullTransactionId horizon, const EsLogState *st)
{
	EsCommitPoint *p = &c->point;
	Datum		args[15];
	char		nulls[15];

	if (c->handled > 0 && c->model == NULL)
	{
		Datum		largs[3];

		largs[0] = CStringGetTextDatum(c->name);
		largs[1] = PointerGetDatum(construct_array(c->handled_ids, c->handled, TEXTOID, -1, false, TYPALIGN_INT));
		largs[2] = PointerGetDatum(construct_array(c->handled_positions, c->handled, INT8OID, 8,
												   FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		if (SPI_execute_plan(es_plan(&ledger_add_plan), largs, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not write the ledger of consumer \"%s\"", c->name);
	}
	whole_batch_read = whole_batch_read && done == c->nevents && c->retry_event_id == NULL;
	if (done > 0)
		es_commit_point_passed(p, c->events[done - 1].tx, c->events[done - 1].position, c->events[done - 1].seq);
	if (whole_batch_read && p->in_log)
	{
		p->log_seq = c->read.end_seq;
		p->log_position = c->read.end_position;
	}
	else if (whole_batch_read && FullTransactionIdPrecedes(p->tx, horizon))
	{
		p->tx = horizon;
		p->position = 0;
	}
	es_commit_point_advance(p, st);

	memset(nulls, ' ', sizeof(nulls));
	args[0] = CStringGetTextDatum(c->name);
	args[1] = FullTransactionIdGetDatum(p->tx);
	args[2] = Int64GetDatum(p->position);
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
	args[9] = Int32GetDatum(c->generation);
	args[10] = Int32GetDatum(c->segment);
	es_commit_point_log_args(p, args + 11, nulls + 11);
	if (SPI_execute_plan(es_plan(c->segments > 1 ? &save_segment_plan : &save_plan), args, nulls, false, 0)
		!= SPI_OK_UPDATE)
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

/* es_read_commit_order filter of a split consumer: the aggregate is in its segment. */
static bool
consumer_in_segment(Datum aggregate_id, void *arg)
{
	Consumer   *c = (Consumer *) arg;

	return es_segment_of_id(TextDatumGetCString(aggregate_id), c->segments) == c->segment;
}

/* Whether fn is the built-in notification outbox's function, es_notification_handler. */
static bool
consumer_is_outbox(EsStore *s, Oid fn)
{
	char	   *name;

	return get_func_namespace(fn) == s->nspid && (name = get_func_name(fn)) != NULL &&
		strcmp(name, "es_notification_handler") == 0;
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
consumer_pass(const char *name, int segments, int segment, bool careful, const FastFailure *failed,
			  TimestampTz *next_due)
{
	Consumer	c;
	EsStore    *s = es_store_current();
	ConstraintsSetStmt *immediate = makeNode(ConstraintsSetStmt);
	FullTransactionId horizon = InvalidFullTransactionId;
	EsLogState	st;
	int			done = 0;
	int			nread = 0;
	bool		retry_due;

	memset(&c, 0, sizeof(c));
	c.name = name;
	c.segments = segments;
	c.segment = segment;
	if (s == NULL || !consumer_load(&c))
		return 0;
	es_segment_load_fences(&c);
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
	/*
	 * Handlers and projection functions read the events; a read model's rows
	 * keep them sealed, and the notification outbox leaves them out (by value:
	 * an upcaster may have renamed a field since it was sealed).
	 */
	c.model = es_read_model_of_function(s, c.function);
	c.reveal = (c.model == NULL && !consumer_is_outbox(s, c.function));
	c.event_desc = lookup_rowtype_tupdesc_copy(s->events_rowtype, -1);
	c.max_events = Max(es_worker_batch_size, 1);
	c.events = palloc(sizeof(BatchEvent) * c.max_events);
	/* room for the retried dead letters and the batch */
	c.handled_ids = palloc(sizeof(Datum) * 2 * c.max_events);
	c.handled_positions = palloc(sizeof(Datum) * 2 * c.max_events);
	c.handled_tx = palloc(sizeof(FullTransactionId) * 2 * c.max_events);
	c.handled_recorded = palloc(sizeof(TimestampTz) * 2 * c.max_events);

	es_dead_letter_retry(&c);
	c.retried_letters = c.handled;

	/*
	 * The log or the horizon, as the log's state says (not while a retry
	 * is pending: the retried event stays the next one).  Below the
	 * horizon, with a snapshot that sees every event below it; in the log,
	 * any snapshot that sees a row sees its events.
	 */
	es_commit_log_state(&st, c.point.in_log);
	if (c.retry_event_id == NULL)
		es_commit_point_follow(&c.point, &st, c.name, c.segment, c.segments);
	if (c.point.in_log)
		PushActiveSnapshot(GetTransactionSnapshot());
	else
		horizon = es_commit_horizon_push();
	if (retry_due)
	{
		es_commit_point_read(&c.point, &c.read);
		c.read.horizon = horizon;
		c.read.event_types = c.event_types ? DatumGetArrayTypeP(c.event_types) : NULL;
		c.read.max_count = es_worker_batch_size;
		if (c.segments > 1)
		{
			c.read.keep = consumer_in_segment;
			c.read.keep_arg = &c;
		}
		es_read_commit_order(&c.read, c.reveal, es_consumer_collect, &c);
	}
	PopActiveSnapshot();
	if (retry_due)
	{
		nread = c.nevents;
		done = consumer_apply_batch(&c, careful, failed);
	}
	consumer_save(&c, done, retry_due && nread < es_worker_batch_size, horizon, &st);
	if (c.retry_event_id != NULL)
		*next_due = Min(*next_due, c.retry_at);
	consumer_keep_latencies(&c);
	return nread;
}

/*
 * es_consumer_run: one batch of consumer name (of its segment segment of
 * segments; 1 and 0 when it is not split), in its own transaction (started
 * and committed here), rerun on the careful path when a handler fails.
 * Returns the number of events read.  Errors other than a handler's
 * propagate, with the transaction still open for the caller to abort.
 */
int
es_consumer_run(const char *name, int segments, int segment, TimestampTz *next_due)
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
		nread = consumer_pass(name, segments, segment, false, NULL, next_due);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		if (applying_index < 0 || !consumer_error_is_handlers(applying_consumer, applying_timeout_ms, edata))
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
		nread = consumer_pass(name, segments, segment, true, &failed, next_due);
	}
	PopActiveSnapshot();
	if (SPI_finish() != SPI_OK_FINISH)
		elog(ERROR, "SPI_finish failed");
	CommitTransactionCommand();
	consumer_publish_latencies();
	MemoryContextSwitchTo(cxt);
	return nread;
}
