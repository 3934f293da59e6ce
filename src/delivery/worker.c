/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The worker processes of ultracore_es: each runs one service (delivery
 *	  to the consumers, the Kafka mirror, the Kafka ingest: see their files,
 *	  which this file does not know) in one database, started by the
 *	  launcher (launcher.c) in every database that has the extension.
 *
 * A worker's loop: reset the latch; reload settings on SIGHUP; exit when
 * its database no longer wants it (the extension was dropped, the service
 * wants fewer processes, a DROP DATABASE waits for it); when the workers
 * are enabled and the extension's catalog is at the library's version,
 * run its service's pass; then sleep on the latch (and the service's
 * descriptor) for as long as the service allows, until a commit that
 * appended wakes it (when its service reads appends), or
 * ultracore_es.worker_poll_interval passes.  SIGTERM ends it at the next
 * interrupt check; the launcher starts it again.  A crash of any process
 * restarts the server; the services resume from their committed
 * checkpoints.  pg_stat_activity shows each as "ultracore_es <service>",
 * with what it is doing.
 *
 * The write path wakes the workers at commit through shared memory: their
 * latches, set by the committing backend (DESIGN.md, decision 7: no NOTIFY,
 * which takes a database-wide lock at commit and loses messages while
 * nobody listens).
 *
 * Claims.  A delivery worker serves a consumer (or a segment of one) only
 * while it holds its claim here, so that two workers never run the same
 * consumer at once and the others go on with the rest; a claim is a
 * worker's slot naming the consumer, gone with the process (on exit, or
 * with shared memory after a crash).
 *
 * Locking: see worker_internal.h.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "delivery/worker_internal.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "core/guc.h"
#include "core/shmem.h"
#include "core/step.h"
#include "write/append.h"

/* Sleep when the extension's catalog waits for ALTER EXTENSION UPDATE. */
#define OUTDATED_NAP_MS		10000

static const EsWorkerService *services[MAX_SERVICES];
static int	nservices = 0;

WorkerShared *es_worker_shared = NULL;

/* This process's slot, when it is a worker. */
static WorkerSlot *my_slot = NULL;

/*
 * The current transaction has work for the workers: all of them
 * (es_worker_wake_at_commit), or those that read new events
 * (es_worker_wake_readers_at_commit).
 */
static bool wake_at_commit = false;
static bool wake_readers_at_commit = false;

/* This pass's units read the commit log (es_worker_reads_log). */
static bool pass_reads_log = false;

/* es_worker_add_service: from _PG_init, before es_worker_init. */
void
es_worker_add_service(const EsWorkerService *service)
{
	if (nservices == MAX_SERVICES)
		elog(ERROR, "too many ultracore_es worker services");
	services[nservices++] = service;
}

int
es_worker_nservices(void)
{
	return nservices;
}

const EsWorkerService *
es_worker_service(int i)
{
	return services[i];
}

/*
 * es_kafka_database_name: the database Kafka serves: ultracore_es.kafka_database,
 * else the first of ultracore_es.database, else postgres.
 */
const char *
es_kafka_database_name(void)
{
	static char name[NAMEDATALEN];
	const char *list = es_worker_database;
	size_t		len;

	if (es_kafka_database != NULL && es_kafka_database[0] != '\0')
		return es_kafka_database;
	if (list == NULL)
		list = "";
	while (*list == ' ' || *list == '\t')
		list++;
	len = strcspn(list, ",");
	while (len > 0 && (list[len - 1] == ' ' || list[len - 1] == '\t'))
		len--;
	if (len == 0)
		return "postgres";
	strlcpy(name, list, Min(len + 1, sizeof(name)));
	return name;
}

/* es_worker_kafka_database: whether database is the one Kafka serves. */
bool
es_worker_kafka_database(const char *database)
{
	return strcmp(database, es_kafka_database_name()) == 0;
}

/*
 * Set the latches of the current database's workers: all of them
 * (READS_NOTHING), those that read appends (READS_APPENDS: a commit that
 * appended), or those that read new events either way (READS_LOG: the
 * sequencer numbered).  A worker with nothing to deliver is not woken by
 * every commit, which would cost the writers a share of the CPU.  Without
 * the lock: see worker_internal.h.
 */
static void
worker_wake(uint32 readers)
{
	int			i;

	if (es_worker_shared == NULL)
		return;
	for (i = 0; i < es_worker_shared->nslots; i++)
	{
		WorkerSlot *slot = &es_worker_shared->slots[i];
		Latch	   *latch;

		if (slot->database != MyDatabaseId || slot->pid == 0)
			continue;
		if (readers == READS_APPENDS && pg_atomic_read_u32(&slot->reads_appends) != READS_APPENDS)
			continue;
		if (readers == READS_LOG && pg_atomic_read_u32(&slot->reads_appends) == READS_NOTHING)
			continue;
		latch = slot->latch;
		pg_read_barrier();
		if (latch != NULL)
			SetLatch(latch);
	}
}

/* es_worker_wake_at_commit: the current transaction has work for the workers. */
void
es_worker_wake_at_commit(void)
{
	wake_at_commit = true;
}

/*
 * es_worker_wake_readers_at_commit: the current transaction makes new
 * events readable in the commit log (the sequencer's).
 */
void
es_worker_wake_readers_at_commit(void)
{
	wake_readers_at_commit = true;
}

/*
 * es_worker_reads_log: in a pass, whether the pass's units read the commit
 * log, and so are woken by the sequencer rather than by every append.
 */
void
es_worker_reads_log(bool reads_log)
{
	pass_reads_log = reads_log;
}

static void
worker_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT && wake_at_commit)
		worker_wake(READS_NOTHING);
	else if (event == XACT_EVENT_COMMIT && wake_readers_at_commit)
		worker_wake(READS_LOG);
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PREPARE || event == XACT_EVENT_PARALLEL_ABORT)
		wake_at_commit = wake_readers_at_commit = false;
}

/* A transaction that appended committed: wake the workers that read appends. */
static void
worker_appends_committed(uint64 events)
{
	worker_wake(READS_APPENDS);
}

static const EsAppendListener worker_listener = {
	.committed = worker_appends_committed,
};

/* One slot per possible background worker. */
static Size
worker_shmem_size(void)
{
	return add_size(offsetof(WorkerShared, slots), mul_size(max_worker_processes, sizeof(WorkerSlot)));
}

static void
worker_shmem_init(void *segment)
{
	WorkerShared *shared = (WorkerShared *) segment;
	int			i;

	shared->lock = &(GetNamedLWLockTranche("ultracore_es workers"))->lock;
	shared->nslots = max_worker_processes;
	for (i = 0; i < shared->nslots; i++)
	{
		pg_atomic_init_u32(&shared->slots[i].reads_appends, 0);
		pg_atomic_init_u64(&shared->slots[i].passes, 0);
	}
}

/* es_worker_init: from _PG_init, preloaded or not. */
void
es_worker_init(void)
{
	es_shmem_add("ultracore_es workers", worker_shmem_size, 1, (void **) &es_worker_shared, worker_shmem_init);
	es_append_listen(&worker_listener);
	RegisterXactCallback(worker_xact_callback, NULL);
	es_launcher_init();
}

/* es_worker_register: from _PG_init while preloading: the launcher. */
void
es_worker_register(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "ultracore_es");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "es_launcher_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "ultracore_es launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "ultracore_es launcher");
	RegisterBackgroundWorker(&worker);
}

/*-------------------------------------------------------------------------
 * In a worker
 *-------------------------------------------------------------------------
 */

/* es_worker_member: this worker's member number among its service's processes. */
int
es_worker_member(void)
{
	return my_slot != NULL ? my_slot->member : 0;
}

/*
 * es_worker_claim: claim consumer (its segment; 0 unsegmented) for this
 * worker until es_worker_release; false when another worker of the
 * database holds it.  One claim at a time.
 */
bool
es_worker_claim(const char *consumer, int segment)
{
	bool		free = true;
	int			i;

	Assert(my_slot != NULL);
	LWLockAcquire(es_worker_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < es_worker_shared->nslots && free; i++)
	{
		WorkerSlot *slot = &es_worker_shared->slots[i];

		if (slot != my_slot && slot->pid != 0 && slot->database == MyDatabaseId &&
			slot->claim_segment == segment && strcmp(slot->claim, consumer) == 0)
			free = false;
	}
	if (free)
	{
		strlcpy(my_slot->claim, consumer, sizeof(my_slot->claim));
		my_slot->claim_segment = segment;
	}
	LWLockRelease(es_worker_shared->lock);
	return free;
}

/* es_worker_release: let go of the claim, and of what the worker was busy with. */
void
es_worker_release(void)
{
	LWLockAcquire(es_worker_shared->lock, LW_EXCLUSIVE);
	my_slot->claim[0] = '\0';
	my_slot->claim_segment = 0;
	my_slot->busy[0] = '\0';
	my_slot->busy_since = 0;
	LWLockRelease(es_worker_shared->lock);
}

/*
 * es_worker_busy: what the worker starts doing now (a consumer's batch),
 * for es_health to tell one stuck in it; NULL when idle.  Also shown in
 * pg_stat_activity.
 */
void
es_worker_busy(const char *what)
{
	if (what != NULL)
		pgstat_report_activity(STATE_RUNNING, psprintf("ultracore_es: %s", what));
	if (my_slot == NULL)
		return;
	LWLockAcquire(es_worker_shared->lock, LW_EXCLUSIVE);
	strlcpy(my_slot->busy, what ? what : "", sizeof(my_slot->busy));
	my_slot->busy_since = what ? GetCurrentTimestamp() : 0;
	LWLockRelease(es_worker_shared->lock);
}

/* Why the worker ends, for es_health; then it exits. */
static void
worker_leave(const char *why, int code)
{
	LWLockAcquire(es_worker_shared->lock, LW_EXCLUSIVE);
	/* A command that asked it to leave said why already (launcher_hold). */
	if (my_slot->last_exit_at < my_slot->started_at)
	{
		strlcpy(my_slot->last_exit, why, sizeof(my_slot->last_exit));
		my_slot->last_exit_at = GetCurrentTimestamp();
	}
	LWLockRelease(es_worker_shared->lock);
	proc_exit(code);
}

/* On shared memory exit, however the worker ends: its claim and its latch go. */
static void
worker_unannounce(int code, Datum arg)
{
	LWLockAcquire(es_worker_shared->lock, LW_EXCLUSIVE);
	if (my_slot->last_exit_at < my_slot->started_at)
	{
		snprintf(my_slot->last_exit, sizeof(my_slot->last_exit), "exited with code %d", code);
		my_slot->last_exit_at = GetCurrentTimestamp();
	}
	my_slot->pid = 0;
	my_slot->latch = NULL;
	my_slot->claim[0] = '\0';
	my_slot->busy[0] = '\0';
	my_slot->busy_since = 0;
	pg_atomic_write_u32(&my_slot->reads_appends, 0);
	LWLockRelease(es_worker_shared->lock);
	es_launcher_wake();
}

/* On the way out (before shared memory goes): the service lets go of its clients. */
static void
worker_exit(int code, Datum arg)
{
	const EsWorkerService *service = services[DatumGetInt32(arg)];

	if (service->stop != NULL)
		service->stop();
}

/*
 * Whether the database wants this worker: its entry is not held by DDL,
 * and the service still wants as many processes.
 */
static bool
worker_wanted(const EsWorkerService *service, bool kafka_database)
{
	DatabaseEntry *db = NULL;
	bool		held = false;
	int			i;

	LWLockAcquire(es_worker_shared->lock, LW_SHARED);
	for (i = 0; i < MAX_DATABASES && db == NULL; i++)
		if (es_worker_shared->databases[i].oid == MyDatabaseId)
			db = &es_worker_shared->databases[i];
	held = (db == NULL || db->held_by != 0);	/* not served any more, or held */
	LWLockRelease(es_worker_shared->lock);
	return !held && my_slot->member <= service->wanted(kafka_database);
}

/* Mark the database's state (present or absent) and tell the launcher. */
static void
worker_database_state(EsDatabaseState state)
{
	bool		changed = false;
	int			i;

	LWLockAcquire(es_worker_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < MAX_DATABASES; i++)
		if (es_worker_shared->databases[i].oid == MyDatabaseId &&
			es_worker_shared->databases[i].state != state)
		{
			es_worker_shared->databases[i].state = state;
			changed = true;
		}
	LWLockRelease(es_worker_shared->lock);
	if (changed)
		es_launcher_wake();
}

typedef struct Installed
{
	bool		current;		/* the catalog is at the library's version */
	char		version[NAMEDATALEN];
} Installed;

static void
worker_check_version(EsStore *s, void *arg)
{
	Installed  *installed = (Installed *) arg;

	installed->current = s->current;
	strlcpy(installed->version, s->version, sizeof(installed->version));
}

/*
 * es_worker_main: the entry point of every worker; bgw_main_arg is its
 * slot, which the launcher filled in.
 */
void
es_worker_main(Datum arg)
{
	const EsWorkerService *service;
	char	   *database;
	bool		kafka_database;
	MemoryContext pass_cxt;
	bool		warned_outdated = false;
	bool		marked_present = false;
	bool		was_enabled = es_worker_enabled;

	my_slot = &es_worker_shared->slots[DatumGetInt32(arg)];
	service = services[my_slot->service];
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(my_slot->database, InvalidOid, 0);
	pgstat_report_appname(psprintf("ultracore_es %s", service->name));
	/* Passes are READ COMMITTED and read-write, whatever the server's defaults. */
	SetConfigOption("default_transaction_isolation", "read committed", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("default_transaction_read_only", "off", PGC_SUSET, PGC_S_OVERRIDE);

	LWLockAcquire(es_worker_shared->lock, LW_EXCLUSIVE);
	my_slot->started_at = GetCurrentTimestamp();
	my_slot->latch = MyLatch;
	pg_write_barrier();
	my_slot->pid = MyProcPid;
	LWLockRelease(es_worker_shared->lock);
	on_shmem_exit(worker_unannounce, (Datum) 0);
	before_shmem_exit(worker_exit, Int32GetDatum(my_slot->service));

	StartTransactionCommand();
	database = MemoryContextStrdup(TopMemoryContext, get_database_name(MyDatabaseId));
	CommitTransactionCommand();
	kafka_database = es_worker_kafka_database(database);
	if (service->start != NULL)
		service->start();

	/*
	 * The services' transactions allocate and free tens of megabytes each.
	 * glibc would give that memory back to the kernel after each one and
	 * fault it in again page by page in the next, which cost a quarter of
	 * the ingest's time (page faults are dear on virtual machines).  Keep
	 * what was freed for the next one instead.
	 */
#ifdef __GLIBC__
	mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
	mallopt(M_TRIM_THRESHOLD, 256 * 1024 * 1024);
#endif
	pass_cxt = AllocSetContextCreate(TopMemoryContext, "ultracore_es worker pass", ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		long		timeout = es_worker_poll_interval;
		bool		reads_appends = false;
		bool		ran = false;
		uint32		reads;
		Installed	installed = {false, ""};
		bool		present = false;
		int			fd;

		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			kafka_database = es_worker_kafka_database(database);
			if (es_worker_enabled != was_enabled && my_slot->member == 1)
				ereport(LOG,
						(errmsg("ultracore_es %s %s in database \"%s\" (ultracore_es.worker_enabled is %s)",
								service->name, es_worker_enabled ? "resumes" : "stops", database,
								es_worker_enabled ? "on" : "off")));
			was_enabled = es_worker_enabled;
		}
		if (!worker_wanted(service, kafka_database))
			worker_leave("no longer wanted in its database", 0);
		MemoryContextReset(pass_cxt);
		MemoryContextSwitchTo(pass_cxt);
		/* A failed look (the database busy, say) proves nothing: look again next time. */
		if (es_step_in_transaction(worker_check_version, &installed, true, &present, NULL, NULL))
		{
			if (!present)
			{
				worker_database_state(DB_ABSENT);
				worker_leave("extension ultracore_es is not installed in its database", 0);
			}
			if (!marked_present)
				worker_database_state(DB_PRESENT);
			marked_present = true;
			if (!installed.current)
			{
				if (!warned_outdated && my_slot->member == 1)
					ereport(LOG,
							(errmsg("ultracore_es %s waits: extension ultracore_es in database \"%s\" is at version %s",
									service->name, database, installed.version),
							 errhint("Run ALTER EXTENSION ultracore_es UPDATE in that database.")));
				warned_outdated = true;
				timeout = OUTDATED_NAP_MS;
			}
			else if (es_worker_enabled)
			{
				warned_outdated = false;
				pgstat_report_activity(STATE_RUNNING, psprintf("ultracore_es: %s", service->name));
				pass_reads_log = false;
				timeout = Max(service->pass(&reads_appends), 0);
				ran = true;
				/* Table statistics, for autovacuum of what the passes wrote (at most once a second). */
				pgstat_report_stat(false);
			}
		}
		/* Disabled or waiting: what the service holds outside is not left unpolled. */
		if (!ran && service->stop != NULL)
			service->stop();
		reads = !reads_appends ? READS_NOTHING : pass_reads_log ? READS_LOG : READS_APPENDS;
		pg_atomic_write_u32(&my_slot->reads_appends, reads);
		pg_atomic_fetch_add_u64(&my_slot->passes, 1);
		pgstat_report_activity(STATE_IDLE, NULL);
		fd = service->wait_fd != NULL ? service->wait_fd() : -1;
		if (fd >= 0)
			(void) WaitLatchOrSocket(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH | WL_SOCKET_READABLE,
									 fd, timeout, PG_WAIT_EXTENSION);
		else
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 timeout, PG_WAIT_EXTENSION);
	}
}

/*-------------------------------------------------------------------------
 * What es_health and the statistics see
 *-------------------------------------------------------------------------
 */

/* The slot of member of service in the current database; NULL: none.  Caller holds the lock. */
static WorkerSlot *
worker_slot_of(int service, int member)
{
	int			i;

	for (i = 0; i < es_worker_shared->nslots; i++)
	{
		WorkerSlot *slot = &es_worker_shared->slots[i];

		if (slot->database == MyDatabaseId && slot->service == service && slot->member == member)
			return slot;
	}
	return NULL;
}

/*
 * es_worker_first_delivery: the pid and start of the current database's
 * first delivery worker (the first service's); false when it does not run.
 */
bool
es_worker_first_delivery(int *pid, TimestampTz *started_at)
{
	WorkerSlot *slot;

	*pid = 0;
	if (es_worker_shared == NULL || nservices == 0)
		return false;
	LWLockAcquire(es_worker_shared->lock, LW_SHARED);
	slot = worker_slot_of(0, 1);
	if (slot != NULL && slot->pid != 0)
	{
		*pid = slot->pid;
		*started_at = slot->started_at;
	}
	LWLockRelease(es_worker_shared->lock);
	return *pid != 0;
}

static bool
worker_served(void)
{
	int			i;

	for (i = 0; i < MAX_DATABASES; i++)
		if (es_worker_shared->databases[i].oid == MyDatabaseId)
			return true;
	return false;
}

/*
 * es_worker_state() returns setof (kind, member, pid, started_at, busy,
 * busy_since, last_exit, last_exit_at, passes): the launcher, then each
 * process the current database wants now (pid NULL: not running).  passes
 * counts the process's loops, whether it ran its service or waited (the
 * extension outdated, worker_enabled off): two more than before an event
 * prove that it has looked since.  No rows when the library is not
 * preloaded.
 */
PG_FUNCTION_INFO_V1(es_worker_state);
Datum
es_worker_state(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	bool		kafka_database;
	Datum		values[9];
	bool		nulls[9];
	int			service;

	InitMaterializedSRF(fcinfo, 0);
	if (es_worker_shared == NULL)
		return (Datum) 0;
	kafka_database = es_worker_kafka_database(get_database_name(MyDatabaseId));
	LWLockAcquire(es_worker_shared->lock, LW_SHARED);
	memset(nulls, true, sizeof(nulls));
	values[0] = CStringGetTextDatum("launcher");
	nulls[0] = false;
	values[1] = Int32GetDatum(1);
	nulls[1] = false;
	values[2] = Int32GetDatum(es_worker_shared->launcher_pid);
	nulls[2] = es_worker_shared->launcher_pid == 0;
	values[3] = TimestampTzGetDatum(es_worker_shared->launcher_started_at);
	nulls[3] = nulls[2];
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	for (service = 0; service < nservices && worker_served(); service++)
	{
		int			wanted = services[service]->wanted(kafka_database);
		int			member;

		for (member = 1; member <= wanted; member++)
		{
			WorkerSlot *slot = worker_slot_of(service, member);
			bool		running = slot != NULL && slot->pid != 0;

			memset(nulls, true, sizeof(nulls));
			values[0] = CStringGetTextDatum(services[service]->name);
			nulls[0] = false;
			values[1] = Int32GetDatum(member);
			nulls[1] = false;
			if (running)
			{
				values[2] = Int32GetDatum(slot->pid);
				values[3] = TimestampTzGetDatum(slot->started_at);
				values[4] = CStringGetTextDatum(slot->busy);
				values[5] = TimestampTzGetDatum(slot->busy_since);
				nulls[2] = nulls[3] = nulls[4] = false;
				nulls[5] = slot->busy_since == 0;
				values[8] = Int64GetDatum((int64) pg_atomic_read_u64(&slot->passes));
				nulls[8] = false;
			}
			if (slot != NULL && slot->last_exit_at != 0)
			{
				values[6] = CStringGetTextDatum(slot->last_exit);
				values[7] = TimestampTzGetDatum(slot->last_exit_at);
				nulls[6] = nulls[7] = false;
			}
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
	}
	LWLockRelease(es_worker_shared->lock);
	return (Datum) 0;
}
