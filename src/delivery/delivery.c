/*-------------------------------------------------------------------------
 *
 * delivery.c
 *	  The delivery workers: a pool of ultracore_es.delivery_workers
 *	  processes per database that share its consumers (handlers and async
 *	  projections, each possibly split into segments), one worker per
 *	  consumer (or segment) at a time; and, in the first of them, the
 *	  idempotency ledger's pruning.
 *
 * Each pass lists the consumers' units (one query), then serves each unit
 * it can claim (worker.c), in an order that differs from worker to worker,
 * until the unit has caught up or used its share of the pass; a unit
 * another worker holds is skipped.  So a handler that takes 20 s on one
 * event, or waits on a lock, holds one worker; the others go on with the
 * rest, and the unit's own order, checkpoint and exactly-once delivery
 * stay those of one consumer (consumer.c).  An error in a unit's batch
 * (other than a handler's, which consumer.c turns into retries and dead
 * letters) is logged, recorded in the consumer's last_error, and the unit
 * is left alone until the next pass.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "delivery/consumer.h"

#include <sys/resource.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "core/guc.h"
#include "core/partition_maker.h"
#include "core/step.h"
#include "core/store.h"
#include "delivery/worker.h"
#include "read/commit_point.h"

/* Longest a unit keeps its worker in one pass, before the next one's turn. */
#define CONSUMER_SHARE_MS	1000

/* How often the idempotency ledger is pruned. */
#define PRUNE_INTERVAL_MS	60000

/* How often the fences of re-split consumers are looked at (segment.c). */
#define COLLECT_INTERVAL_MS 5000

/* The consumers to serve, with the number of segments each is split into. */
static EsPlan units_plan = {
	"SELECT c.name, COALESCE(h.parallelism, 1) FROM @extschema@.es_consumers c"
	"  LEFT JOIN @extschema@.es_handlers h ON h.name OPERATOR(pg_catalog.=) c.name"
	" WHERE NOT c.paused AND c.kind OPERATOR(pg_catalog.<>) 'kafka' ORDER BY c.name",
	0, {InvalidOid}
};

/*
 * The idempotency ledger is pruned in short transactions of PRUNE_BATCH
 * records, oldest first by its index on handled_at, for at most
 * PRUNE_SLICE_MS a pass: however long the ledger, no transaction and no
 * pass lasts long (a vacuum follows each batch's dead rows, not one
 * million of them at once).
 */
#define PRUNE_BATCH			5000
#define PRUNE_SLICE_MS		200

static EsPlan prune_plan = {
	"DELETE FROM @extschema@.es_handled"
	" WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY("
	"   SELECT ctid FROM @extschema@.es_handled"
	"    WHERE handled_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) $1)"
	"    ORDER BY handled_at LIMIT $2))",
	2, {INTERVALOID, INT4OID}
};

static TimestampTz last_prune = 0;
static bool prune_unfinished = false;	/* the last slice left old records */
static TimestampTz last_collect = 0;
static uint32 passes = 0;

/* A consumer, or one of its segments. */
typedef struct Unit
{
	char	   *name;
	int			segments;
	int			segment;
} Unit;

typedef struct UnitList
{
	MemoryContext cxt;
	Unit	   *units;
	int			nunits;
	bool		log_live;		/* the units read the commit log */
} UnitList;

/*
 * A units_plan row's number of segments, within what es_handlers' CHECK
 * allows (should that constraint be gone): the list is sized by their sum.
 */
static int
delivery_segments(HeapTuple row, TupleDesc desc)
{
	bool		isnull;
	int32		segments = DatumGetInt32(SPI_getbinval(row, desc, 2, &isnull));

	return isnull ? 1 : Min(Max(segments, 1), ES_MAX_SEGMENTS);
}

static void
delivery_list_units(EsStore *s, void *arg)
{
	UnitList   *list = (UnitList *) arg;
	int			n = 0;
	uint64		i;
	EsLogState	st;

	es_commit_log_state(&st, false);
	list->log_live = st.live;
	if (SPI_execute_plan(es_plan(&units_plan), NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not list the consumers");
	for (i = 0; i < SPI_processed; i++)
		n += delivery_segments(SPI_tuptable->vals[i], SPI_tuptable->tupdesc);
	list->units = MemoryContextAlloc(list->cxt, sizeof(Unit) * Max(n, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		char	   *name = MemoryContextStrdup(list->cxt,
											   TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[i],
																				 SPI_tuptable->tupdesc, 1, &isnull)));
		int			segments = delivery_segments(SPI_tuptable->vals[i], SPI_tuptable->tupdesc);
		int			k;

		for (k = 0; k < segments; k++)
		{
			list->units[list->nunits].name = name;
			list->units[list->nunits].segments = segments;
			list->units[list->nunits].segment = k;
			list->nunits++;
		}
	}
}

/*
 * Run a unit's batches until it has caught up, fails, or has had its share
 * of the pass.  Errors are reported and recorded, not raised.
 */
static void
delivery_serve(const Unit *u, TimestampTz *next_due)
{
	MemoryContext cxt = CurrentMemoryContext;
	TimestampTz started = GetCurrentTimestamp();
	char	   *what = u->segments > 1 ? psprintf("consumer %s segment %d of %d", u->name, u->segment, u->segments)
		: psprintf("consumer %s", u->name);
	char	   *volatile failure = NULL;
	int			nread;

	PG_TRY();
	{
		do
		{
			CHECK_FOR_INTERRUPTS();
			es_worker_busy(what);
			nread = es_consumer_run(u->name, u->segments, u->segment, next_due);
		} while (nread >= es_worker_batch_size &&
				 !TimestampDifferenceExceeds(started, GetCurrentTimestamp(), CONSUMER_SHARE_MS));
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
		es_consumer_record_failure(u->name, failure);
}

/* Delete a batch of idempotency records older than ultracore_es.handled_retention. */
static void
delivery_prune_step(EsStore *s, void *arg)
{
	Datum		args[2];

	args[0] = DirectFunctionCall7(make_interval, Int32GetDatum(0), Int32GetDatum(0),
								  Int32GetDatum(0), Int32GetDatum(0), Int32GetDatum(0),
								  Int32GetDatum(0), Float8GetDatum((double) es_handled_retention));
	args[1] = Int32GetDatum(PRUNE_BATCH);
	if (SPI_execute_plan(es_plan(&prune_plan), args, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not prune the idempotency ledger");
	*(uint64 *) arg = SPI_processed;
}

/* One slice of the prune: batches until the old records are gone or the slice is used. */
static void
delivery_prune(void)
{
	TimestampTz started = GetCurrentTimestamp();
	uint64		deleted;

	es_worker_busy("pruning the idempotency ledger");
	do
	{
		CHECK_FOR_INTERRUPTS();
		deleted = 0;
		if (!es_step_in_transaction(delivery_prune_step, &deleted, true, NULL, NULL, NULL))
			break;
	} while (deleted == PRUNE_BATCH && !TimestampDifferenceExceeds(started, GetCurrentTimestamp(), PRUNE_SLICE_MS));
	prune_unfinished = (deleted == PRUNE_BATCH);
	es_worker_busy(NULL);
	last_prune = GetCurrentTimestamp();
}

/* Drop the old segments of re-split consumers that every new one has passed. */
static void
delivery_collect_step(EsStore *s, void *arg)
{
	es_segment_collect();
}

/* The partitions of es_events ahead of the appends (partition_maker.c). */
static void
delivery_partitions_step(EsStore *s, void *arg)
{
	int			made;

	(void) es_partitions_make(s, 0, false, &made);
}

/*
 * The service's pass: every unit this worker can claim, starting at a
 * place of its own (workers do not all try the same units first), then
 * the maintenance when it is due (in the first worker).  Sleeps until the
 * poll interval, or until a retry falls due; reads appends when there are
 * consumers.
 */
static long
delivery_pass(bool *reads_appends)
{
	UnitList	list = {CurrentMemoryContext, NULL, 0, false};
	TimestampTz next_due = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), es_worker_poll_interval);
	int			member = es_worker_member();
	int			first;
	int			i;

	if (!es_step_in_transaction(delivery_list_units, &list, true, NULL, NULL, NULL))
		return es_worker_poll_interval;
	/*
	 * While the commit log is live the units read it, and the sequencer
	 * wakes the workers when it numbers: the commit of an append would only
	 * wake them to find nothing new in the log yet.
	 */
	*reads_appends = (list.nunits > 0);
	es_worker_reads_log(list.log_live);
	first = list.nunits > 0 ? (int) ((passes++ + (uint32) (member - 1) * list.nunits / Max(es_delivery_workers, 1))
									 % list.nunits) : 0;
	for (i = 0; i < list.nunits; i++)
	{
		const Unit *u = &list.units[(first + i) % list.nunits];

		CHECK_FOR_INTERRUPTS();
		if (!es_worker_claim(u->name, u->segment))
			continue;
		delivery_serve(u, &next_due);
		es_worker_release();
		MemoryContextSwitchTo(list.cxt);
	}
	es_worker_busy(NULL);
	if (member == 1 && es_handled_retention > 0 &&
		(prune_unfinished || TimestampDifferenceExceeds(last_prune, GetCurrentTimestamp(), PRUNE_INTERVAL_MS)))
		delivery_prune();
	if (member == 1)
	{
		int			code;
		char	   *error;

		/* A lock it could not get in time is tried again at the next pass. */
		if (!es_step_in_transaction(delivery_partitions_step, NULL, false, NULL, &code, &error) &&
			code != ERRCODE_LOCK_NOT_AVAILABLE)
			ereport(LOG,
					(errmsg("ultracore_es delivery: could not make the partitions of es_events: %s", error)));
	}
	if (member == 1 && TimestampDifferenceExceeds(last_collect, GetCurrentTimestamp(), COLLECT_INTERVAL_MS))
	{
		(void) es_step_in_transaction(delivery_collect_step, NULL, true, NULL, NULL, NULL);
		last_collect = GetCurrentTimestamp();
	}
	return Max(0, (long) ((next_due - GetCurrentTimestamp()) / 1000));
}

/*
 * A delivery worker yields the CPU to client sessions and to the Kafka
 * workers: a consumer catching up on a backlog runs at full speed on an
 * idle core, but never takes one from the appends or the mirror
 * (ultracore_es.delivery_nice).
 */
static void
delivery_start(void)
{
	if (es_delivery_nice > 0 && setpriority(PRIO_PROCESS, 0, es_delivery_nice) != 0)
		ereport(WARNING,
				(errmsg("ultracore_es delivery: could not lower the worker's CPU priority: %m")));
}

/* Every database with the extension has ultracore_es.delivery_workers of them. */
static int
delivery_wanted(bool kafka_database)
{
	return es_delivery_workers;
}

static const EsWorkerService delivery_service = {
	.name = "delivery",
	.wanted = delivery_wanted,
	.start = delivery_start,
	.pass = delivery_pass,
};

/*
 * es_delivery_init: from _PG_init.  The first service: its first worker
 * is the one the launcher starts to probe a database.
 */
void
es_delivery_init(void)
{
	es_worker_add_service(&delivery_service);
}
