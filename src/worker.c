/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The background worker of ultracore_es: one process, started by the
 *	  postmaster when the library is preloaded, connected to the database
 *	  named by ultracore_es.database, that runs every consumer (consumer.c)
 *	  in turn.
 *
 * The loop: reset the latch; reload settings on SIGHUP; run each consumer's
 * batches (a transaction each) until it has caught up or used its share of
 * the pass; then sleep on the latch until a commit that appended wakes it
 * (shmem.c), a retry falls due, or ultracore_es.worker_poll_interval
 * passes.  SIGTERM ends it at the next interrupt check; a crash (of the
 * worker or of any backend) restarts it with the server, from the committed
 * checkpoints.  pg_stat_activity shows it as "ultracore_es worker", with the
 * consumer it is serving.  When ultracore_es.kafka_brokers is set, each
 * pass also runs the Kafka mirror and ingest (kafka.c).
 *
 * An error in one consumer's batch (other than a handler's, which
 * consumer.c turns into retries and dead letters) is logged, recorded in the
 * consumer's last_error, and the consumer is left alone until the next poll.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "ultracore_es.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

/* Longest a consumer keeps the worker in one pass, before the next one's turn. */
#define CONSUMER_SHARE_MS	1000

/* Sleep when the extension is not (yet) installed in the database. */
#define NOT_INSTALLED_NAP_MS 10000

/* How often the idempotency ledger is pruned. */
#define PRUNE_INTERVAL_MS	60000

/* Sleep while Kafka messages are in flight (their acknowledgements are polled). */
#define KAFKA_BUSY_MS		5

/*
 * es_worker_register: from _PG_init while preloading.  The worker (member
 * 0), and the Kafka ingest workers (members 1 to kafka_ingest_workers).
 */
void
es_worker_register(void)
{
	BackgroundWorker worker;
	int			member;

	for (member = 0; member <= es_kafka_ingest_workers; member++)
	{
		memset(&worker, 0, sizeof(worker));
		worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
		worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
		worker.bgw_restart_time = 5;
		worker.bgw_main_arg = Int32GetDatum(member);
		snprintf(worker.bgw_library_name, BGW_MAXLEN, "ultracore_es");
		snprintf(worker.bgw_function_name, BGW_MAXLEN, "es_worker_main");
		if (member == 0)
		{
			snprintf(worker.bgw_name, BGW_MAXLEN, "ultracore_es worker");
			snprintf(worker.bgw_type, BGW_MAXLEN, "ultracore_es worker");
		}
		else
		{
			snprintf(worker.bgw_name, BGW_MAXLEN, "ultracore_es kafka ingest %d", member);
			snprintf(worker.bgw_type, BGW_MAXLEN, "ultracore_es kafka ingest");
		}
		RegisterBackgroundWorker(&worker);
	}
}

static EsPlan consumers_plan = {
	"SELECT name FROM @extschema@.es_consumers"
	" WHERE NOT paused AND kind OPERATOR(pg_catalog.<>) 'kafka' ORDER BY name",
	0, {InvalidOid}
};

static EsPlan failed_plan = {
	"UPDATE @extschema@.es_consumers SET last_error = $2, last_error_at = pg_catalog.now()"
	" WHERE name OPERATOR(pg_catalog.=) $1",
	2, {TEXTOID, TEXTOID}
};

static EsPlan prune_plan = {
	"DELETE FROM @extschema@.es_handled"
	" WHERE handled_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) $1)",
	1, {INTERVALOID}
};

/*
 * es_worker_transaction: run fn(store, arg) in a transaction of its own,
 * with an SPI connection and a snapshot, when the extension is installed
 * (*installed tells, when not NULL).  An error is logged (if report), the
 * transaction aborted, its SQLSTATE and "SQLSTATE: message" text (in the
 * caller's memory) returned in *sqlerrcode and *error when not NULL, and
 * false returned: the worker goes on.  The worker's loop and the Kafka
 * clients (kafka.c) run their steps through it.
 */
bool
es_worker_transaction(void (*fn) (EsStore *s, void *arg), void *arg, bool report, bool *installed,
					  int *sqlerrcode, char **error)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool ok = true;

	PG_TRY();
	{
		EsStore    *s;

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		PushActiveSnapshot(GetTransactionSnapshot());
		s = es_store_current();
		if (installed != NULL)
			*installed = (s != NULL);
		if (s != NULL)
			fn(s, arg);
		PopActiveSnapshot();
		SPI_finish();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		if (report)
			EmitErrorReport();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		MemoryContextSwitchTo(cxt);
		if (sqlerrcode != NULL)
			*sqlerrcode = edata->sqlerrcode;
		if (error != NULL)
			*error = es_consumer_error_text(edata);
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	return ok;
}

typedef struct ConsumerList
{
	MemoryContext cxt;
	List	   *names;
} ConsumerList;

static void
worker_list_consumers(EsStore *s, void *arg)
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
 * The consumers to serve, in a list of names allocated in cxt; NIL when the
 * extension is not installed (*installed false) or on an error.
 */
static List *
worker_consumers(MemoryContext cxt, bool *installed)
{
	ConsumerList list = {cxt, NIL};

	if (!es_worker_transaction(worker_list_consumers, &list, true, installed, NULL, NULL))
		return NIL;
	return list.names;
}

typedef struct Failure
{
	const char *name;
	const char *message;
} Failure;

static void
worker_record_failure(EsStore *s, void *arg)
{
	Failure    *f = (Failure *) arg;
	Datum		args[2];

	args[0] = CStringGetTextDatum(f->name);
	args[1] = CStringGetTextDatum(f->message);
	if (SPI_execute_plan(es_plan(&failed_plan), args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not record the failure of consumer \"%s\"", f->name);
}

/*
 * Run a consumer's batches until it has caught up, fails, or has had its
 * share of the pass.  Errors are reported and recorded, not raised.
 */
static void
worker_serve(const char *name, TimestampTz *next_due)
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
		failure = es_consumer_error_text(edata);
		FreeErrorData(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	if (failure != NULL)
		es_worker_record_failure(name, failure);
}

/*
 * es_worker_record_failure: keep an error on a consumer's row (last_error),
 * in a transaction of its own.  Also for the Kafka clients' rows.
 */
void
es_worker_record_failure(const char *name, const char *message)
{
	Failure		f = {name, message};

	(void) es_worker_transaction(worker_record_failure, &f, true, NULL, NULL, NULL);
}

/* Delete idempotency records older than ultracore_es.handled_retention. */
static void
worker_prune_ledger(EsStore *s, void *arg)
{
	Datum		retention = DirectFunctionCall7(make_interval, Int32GetDatum(0), Int32GetDatum(0),
												Int32GetDatum(0), Int32GetDatum(0), Int32GetDatum(0),
												Int32GetDatum(0), Float8GetDatum((double) es_handled_retention));

	if (SPI_execute_plan(es_plan(&prune_plan), &retention, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not prune the idempotency ledger");
}

static void
worker_prune(void)
{
	if (es_handled_retention <= 0)
		return;
	pgstat_report_activity(STATE_RUNNING, "ultracore_es: pruning the idempotency ledger");
	(void) es_worker_transaction(worker_prune_ledger, NULL, true, NULL, NULL, NULL);
}

/* On the way out, however it exits: no librdkafka client survives the worker. */
static void
worker_exit(int code, Datum arg)
{
	es_kafka_stop();
}

static void
worker_nothing(EsStore *s, void *arg)
{
}

/*
 * A pass of an ingest worker: the ingest, when the worker is enabled and
 * the extension installed.  Returns how long to sleep.
 */
static long
worker_ingest_pass(void)
{
	bool		installed = false;
	bool		busy;

	/* Disabled, or nothing to ingest: Kafka clients are not left unpolled. */
	if (!es_worker_enabled || es_kafka_brokers == NULL || es_kafka_brokers[0] == '\0' ||
		es_kafka_ingest_topics == NULL || es_kafka_ingest_topics[0] == '\0')
	{
		es_kafka_stop();
		return es_worker_poll_interval;
	}
	(void) es_worker_transaction(worker_nothing, NULL, true, &installed, NULL, NULL);
	if (!installed)
	{
		es_kafka_stop();		/* nothing to ingest into */
		return NOT_INSTALLED_NAP_MS;
	}
	busy = es_kafka_ingest_pass();
	/* Table statistics, for autovacuum of what the batches wrote (at most once a second). */
	pgstat_report_stat(false);
	return busy ? 0 : es_worker_poll_interval;
}

/*
 * A pass of the worker: the consumers (handlers, async projections), the
 * ledger's pruning, the Kafka mirror.  Returns how long to sleep.
 */
static long
worker_pass(MemoryContext pass_cxt, bool *warned_not_installed, TimestampTz *last_prune)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz next_due = TimestampTzPlusMilliseconds(now, es_worker_poll_interval);
	bool		installed = true;
	List	   *names;
	ListCell   *lc;

	if (!es_worker_enabled)
	{
		es_shmem_worker_reads_appends(false);
		es_kafka_stop();		/* disabled: Kafka clients are not left unpolled */
		return es_worker_poll_interval;
	}
	names = worker_consumers(pass_cxt, &installed);
	es_shmem_worker_reads_appends(installed &&
								  (names != NIL || (es_kafka_brokers != NULL && es_kafka_brokers[0] != '\0')));
	if (!installed)
	{
		if (!*warned_not_installed)
			ereport(LOG,
					(errmsg("ultracore_es worker: extension ultracore_es is not installed in database \"%s\"",
							es_worker_database),
					 errhint("Run CREATE EXTENSION ultracore_es in that database, or set ultracore_es.database.")));
		*warned_not_installed = true;
		es_kafka_stop();		/* nothing to mirror */
		return NOT_INSTALLED_NAP_MS;
	}
	*warned_not_installed = false;
	foreach(lc, names)
	{
		CHECK_FOR_INTERRUPTS();
		worker_serve((const char *) lfirst(lc), &next_due);
		MemoryContextSwitchTo(pass_cxt);
	}
	if (TimestampDifferenceExceeds(*last_prune, GetCurrentTimestamp(), PRUNE_INTERVAL_MS))
	{
		worker_prune();
		*last_prune = GetCurrentTimestamp();
	}
	/* Kafka: while messages are in flight, come back within a few milliseconds. */
	if (es_kafka_mirror_pass())
		next_due = Min(next_due, TimestampTzPlusMilliseconds(GetCurrentTimestamp(), KAFKA_BUSY_MS));
	/* Table statistics, for autovacuum of what the batches wrote. */
	pgstat_report_stat(false);
	now = GetCurrentTimestamp();
	return Max(0, Min((long) es_worker_poll_interval, (long) ((next_due - now) / 1000)));
}

/*
 * es_worker_main: the entry point of the worker (member 0) and of the
 * Kafka ingest workers (members 1 and up).  The ingest has processes of
 * its own: an append per message costs several times what a batch append
 * costs per event, and the members share the topics' partitions, so more
 * of them append in parallel; the mirror's lag does not wait on the
 * ingest's batches either.
 */
void
es_worker_main(Datum arg)
{
	int			member = DatumGetInt32(arg);
	MemoryContext pass_cxt;
	bool		warned_not_installed = false;
	bool		was_enabled = es_worker_enabled;
	TimestampTz last_prune = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(es_worker_database, NULL, 0);
	pgstat_report_appname(member == 0 ? "ultracore_es worker" : "ultracore_es kafka ingest");
	/* Batches are READ COMMITTED and read-write, whatever the server's defaults. */
	SetConfigOption("default_transaction_isolation", "read committed", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("default_transaction_read_only", "off", PGC_SUSET, PGC_S_OVERRIDE);
	if (member == 0)
		es_shmem_register_worker();
	before_shmem_exit(worker_exit, (Datum) 0);
	if (member == 0)
		ereport(LOG,
				(errmsg("ultracore_es worker started for database \"%s\"", es_worker_database)));

	/*
	 * The worker's batches allocate and free tens of megabytes per
	 * transaction.  glibc would give that memory back to the kernel after
	 * each one and fault it in again page by page in the next, which cost a
	 * quarter of the ingest's time (page faults are dear on virtual
	 * machines).  Keep what was freed for the next batch instead.
	 */
#ifdef __GLIBC__
	mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
	mallopt(M_TRIM_THRESHOLD, 256 * 1024 * 1024);
#endif
	pass_cxt = AllocSetContextCreate(TopMemoryContext, "ultracore_es worker pass", ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		long		timeout;

		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			if (es_worker_enabled != was_enabled && member == 0)
				ereport(LOG,
						(errmsg("ultracore_es worker %s delivering events (ultracore_es.worker_enabled is %s)",
								es_worker_enabled ? "resumes" : "stops",
								es_worker_enabled ? "on" : "off")));
			was_enabled = es_worker_enabled;
		}
		MemoryContextReset(pass_cxt);
		MemoryContextSwitchTo(pass_cxt);
		if (member == 0)
			timeout = worker_pass(pass_cxt, &warned_not_installed, &last_prune);
		else
			timeout = worker_ingest_pass();
		pgstat_report_activity(STATE_IDLE, NULL);
		if (member > 0 && es_kafka_ingest_wait_fd() >= 0)
			(void) WaitLatchOrSocket(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH | WL_SOCKET_READABLE,
									 es_kafka_ingest_wait_fd(), timeout, PG_WAIT_EXTENSION);
		else
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 timeout, PG_WAIT_EXTENSION);
	}
}
