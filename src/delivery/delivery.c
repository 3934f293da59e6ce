/*-------------------------------------------------------------------------
 *
 * delivery.c
 *	  The worker service that delivers events to the consumers (handlers
 *	  and async projections): each pass runs every consumer's batches in
 *	  turn (consumer.c), and now and then prunes the idempotency ledger.
 *
 * A consumer runs until it has caught up or used its share of the pass,
 * so that one with a backlog does not keep the others waiting for long.
 * An error in one consumer's batch (other than a handler's, which
 * consumer.c turns into retries and dead letters) is logged, recorded in
 * the consumer's last_error, and the consumer is left alone until the next
 * pass.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "delivery/consumer.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "core/guc.h"
#include "core/step.h"
#include "core/store.h"
#include "delivery/worker.h"

/* Longest a consumer keeps the worker in one pass, before the next one's turn. */
#define CONSUMER_SHARE_MS	1000

/* How often the idempotency ledger is pruned. */
#define PRUNE_INTERVAL_MS	60000

static EsPlan consumers_plan = {
	"SELECT name FROM @extschema@.es_consumers"
	" WHERE NOT paused AND kind OPERATOR(pg_catalog.<>) 'kafka' ORDER BY name",
	0, {InvalidOid}
};

static EsPlan prune_plan = {
	"DELETE FROM @extschema@.es_handled"
	" WHERE handled_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) $1)",
	1, {INTERVALOID}
};

static TimestampTz last_prune = 0;

typedef struct ConsumerList
{
	MemoryContext cxt;
	List	   *names;
} ConsumerList;

static void
delivery_list_consumers(EsStore *s, void *arg)
{
	ConsumerList *list = (ConsumerList *) arg;
	uint64		i;

	if (SPI_execute_plan(es_plan(&consumers_plan), NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not list the consumers");
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);
		MemoryContext old = MemoryContextSwitchTo(list->cxt);

		list->names = lappend(list->names, TextDatumGetCString(d));
		MemoryContextSwitchTo(old);
	}
}

/*
 * Run a consumer's batches until it has caught up, fails, or has had its
 * share of the pass.  Errors are reported and recorded, not raised.
 */
static void
delivery_serve(const char *name, TimestampTz *next_due)
{
	MemoryContext cxt = CurrentMemoryContext;
	TimestampTz started = GetCurrentTimestamp();
	char	   *volatile failure = NULL;

	pgstat_report_activity(STATE_RUNNING, psprintf("ultracore_es: consumer %s", name));
	PG_TRY();
	{
		while (es_consumer_run(name, next_due) >= es_worker_batch_size &&
			   !TimestampDifferenceExceeds(started, GetCurrentTimestamp(), CONSUMER_SHARE_MS))
			CHECK_FOR_INTERRUPTS();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		EmitErrorReport();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		failure = es_error_text(edata);
		FreeErrorData(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	if (failure != NULL)
		es_consumer_record_failure(name, failure);
}

/* Delete idempotency records older than ultracore_es.handled_retention. */
static void
delivery_prune_step(EsStore *s, void *arg)
{
	Datum		retention = DirectFunctionCall7(make_interval, Int32GetDatum(0), Int32GetDatum(0),
												Int32GetDatum(0), Int32GetDatum(0), Int32GetDatum(0),
												Int32GetDatum(0), Float8GetDatum((double) es_handled_retention));

	if (SPI_execute_plan(es_plan(&prune_plan), &retention, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not prune the idempotency ledger");
}

/*
 * The service's pass: every consumer in turn, then the ledger's pruning
 * when it is due.  Sleeps until the poll interval, or until a retry falls
 * due; reads appends when it has consumers.
 */
static long
delivery_pass(bool *reads_appends)
{
	ConsumerList list = {CurrentMemoryContext, NIL};
	TimestampTz next_due = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), es_worker_poll_interval);
	ListCell   *lc;

	if (!es_step_in_transaction(delivery_list_consumers, &list, true, NULL, NULL, NULL))
		return es_worker_poll_interval;
	*reads_appends = (list.names != NIL);
	foreach(lc, list.names)
	{
		CHECK_FOR_INTERRUPTS();
		delivery_serve((const char *) lfirst(lc), &next_due);
		MemoryContextSwitchTo(list.cxt);
	}
	if (es_handled_retention > 0 &&
		TimestampDifferenceExceeds(last_prune, GetCurrentTimestamp(), PRUNE_INTERVAL_MS))
	{
		pgstat_report_activity(STATE_RUNNING, "ultracore_es: pruning the idempotency ledger");
		(void) es_step_in_transaction(delivery_prune_step, NULL, true, NULL, NULL, NULL);
		last_prune = GetCurrentTimestamp();
	}
	return Max(0, (long) ((next_due - GetCurrentTimestamp()) / 1000));
}

static const EsWorkerService delivery_service = {
	.name = "consumers",
	.process = "worker",
	.processes = 1,
	.pass = delivery_pass,
};

/* es_delivery_init: from _PG_init; the first service, of the first process. */
void
es_delivery_init(void)
{
	es_worker_add_service(&delivery_service);
}
