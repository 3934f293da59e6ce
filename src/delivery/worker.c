/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The background processes of ultracore_es: started by the postmaster
 *	  when the library is preloaded, connected to the database named by
 *	  ultracore_es.database, each running in passes the services plugged
 *	  into it (delivery to the consumers, the Kafka mirror, the Kafka
 *	  ingest: see their files), which this file does not know.
 *
 * Processes are named by their services: "worker" (the consumers and the
 * Kafka mirror) and "kafka ingest" (one or more).  The loop: reset the
 * latch; reload settings on SIGHUP; when the worker is enabled and the
 * extension installed, run each service's pass; then sleep on the latch
 * (and a service's descriptor) for as long as the services allow, until a
 * commit that appended wakes the process (when a service reads appends),
 * or ultracore_es.worker_poll_interval passes.  SIGTERM ends a process at
 * the next interrupt check; a crash (of a worker or of any backend)
 * restarts it with the server, and the services resume from their
 * committed checkpoints.  pg_stat_activity shows each as "ultracore_es
 * <process>", with the service it is running.
 *
 * The write path wakes the worker at commit through shared memory: its
 * latch, set by the committing backend (DESIGN.md, decision 7: no NOTIFY,
 * which takes a database-wide lock at commit and loses messages while
 * nobody listens).  Locking: the worker's registration is under a
 * spinlock.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "delivery/worker.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/spin.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "core/guc.h"
#include "core/shmem.h"
#include "core/step.h"
#include "write/append.h"

/* Sleep when the extension is not (yet) installed in the database. */
#define NOT_INSTALLED_NAP_MS 10000

#define MAX_SERVICES		8

static const EsWorkerService *services[MAX_SERVICES];
static int	nservices = 0;

/* The process that commits wake: the first one of the first service's process. */
typedef struct WorkerShared
{
	slock_t		mutex;
	int			pid;
	TimestampTz started_at;
	Latch	   *latch;
	Oid			database;		/* commits elsewhere do not concern it */
	bool		reads_appends;	/* a service of it reads appends */
} WorkerShared;

static WorkerShared *worker_shared = NULL;

/* The current transaction has work for the worker (es_worker_wake_at_commit). */
static bool wake_at_commit = false;

/* es_worker_add_service: from _PG_init. */
void
es_worker_add_service(const EsWorkerService *service)
{
	if (nservices == MAX_SERVICES)
		elog(ERROR, "too many ultracore_es worker services");
	services[nservices++] = service;
}

/*
 * Set the worker's latch; for appends alone (for_appends), only when it
 * reads them: a worker with nothing to deliver is not woken by every
 * commit, which would cost the writers a share of the CPU.
 */
static void
worker_wake(bool for_appends)
{
	Latch	   *latch = NULL;

	if (worker_shared == NULL)
		return;
	SpinLockAcquire(&worker_shared->mutex);
	if (worker_shared->database == MyDatabaseId && (!for_appends || worker_shared->reads_appends))
		latch = worker_shared->latch;
	SpinLockRelease(&worker_shared->mutex);
	if (latch != NULL)
		SetLatch(latch);
}

/* es_worker_wake_at_commit: the current transaction has work for the worker. */
void
es_worker_wake_at_commit(void)
{
	wake_at_commit = true;
}

static void
worker_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT && wake_at_commit)
		worker_wake(false);
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PREPARE || event == XACT_EVENT_PARALLEL_ABORT)
		wake_at_commit = false;
}

/* A transaction that appended committed: wake the worker, if it reads appends. */
static void
worker_appends_committed(uint64 events)
{
	worker_wake(true);
}

static const EsAppendListener worker_listener = {
	.committed = worker_appends_committed,
};

static void
worker_shmem_init(void *segment)
{
	SpinLockInit(&((WorkerShared *) segment)->mutex);
}

/* es_worker_init: from _PG_init, preloaded or not. */
void
es_worker_init(void)
{
	es_shmem_add("ultracore_es worker", sizeof(WorkerShared), 0, (void **) &worker_shared,
				 worker_shmem_init);
	es_append_listen(&worker_listener);
	RegisterXactCallback(worker_xact_callback, NULL);
}

/* es_worker_status: the worker's pid and start; false when none runs. */
bool
es_worker_status(int *pid, TimestampTz *started_at)
{
	if (worker_shared == NULL)
		return false;
	SpinLockAcquire(&worker_shared->mutex);
	*pid = worker_shared->pid;
	*started_at = worker_shared->started_at;
	SpinLockRelease(&worker_shared->mutex);
	return *pid != 0;
}

static void
worker_reads_appends(bool reads)
{
	SpinLockAcquire(&worker_shared->mutex);
	worker_shared->reads_appends = reads;
	SpinLockRelease(&worker_shared->mutex);
}

static void
worker_unregister(int code, Datum arg)
{
	SpinLockAcquire(&worker_shared->mutex);
	if (worker_shared->pid == MyProcPid)
	{
		worker_shared->pid = 0;
		worker_shared->latch = NULL;
	}
	SpinLockRelease(&worker_shared->mutex);
}

/* The process that commits wake announces its latch. */
static void
worker_announce(void)
{
	if (worker_shared == NULL)
		elog(ERROR, "ultracore_es shared memory is not initialized");
	SpinLockAcquire(&worker_shared->mutex);
	worker_shared->pid = MyProcPid;
	worker_shared->started_at = GetCurrentTimestamp();
	worker_shared->latch = MyLatch;
	worker_shared->database = MyDatabaseId;
	SpinLockRelease(&worker_shared->mutex);
	on_shmem_exit(worker_unregister, (Datum) 0);
}

/*
 * The processes: the distinct process names of the services, in order of
 * registration; process 0 is the one commits wake.  bgw_main_arg is
 * process * 1000 + member.
 */
static int
worker_processes(const char **names, int *counts)
{
	int			nprocesses = 0;
	int			i;
	int			p;

	for (i = 0; i < nservices; i++)
	{
		for (p = 0; p < nprocesses && strcmp(names[p], services[i]->process) != 0; p++)
			;
		if (p == nprocesses)
		{
			names[nprocesses] = services[i]->process;
			counts[nprocesses++] = services[i]->processes;
		}
	}
	return nprocesses;
}

/* es_worker_register: from _PG_init while preloading, after the services were added. */
void
es_worker_register(void)
{
	const char *names[MAX_SERVICES];
	int			counts[MAX_SERVICES];
	int			nprocesses = worker_processes(names, counts);
	int			p;
	int			member;

	for (p = 0; p < nprocesses; p++)
		for (member = 1; member <= counts[p]; member++)
		{
			BackgroundWorker worker;

			memset(&worker, 0, sizeof(worker));
			worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
			worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
			worker.bgw_restart_time = 5;
			worker.bgw_main_arg = Int32GetDatum(p * 1000 + member);
			snprintf(worker.bgw_library_name, BGW_MAXLEN, "ultracore_es");
			snprintf(worker.bgw_function_name, BGW_MAXLEN, "es_worker_main");
			snprintf(worker.bgw_type, BGW_MAXLEN, "ultracore_es %s", names[p]);
			if (counts[p] == 1)
				snprintf(worker.bgw_name, BGW_MAXLEN, "ultracore_es %s", names[p]);
			else
				snprintf(worker.bgw_name, BGW_MAXLEN, "ultracore_es %s %d", names[p], member);
			RegisterBackgroundWorker(&worker);
		}
}

/* On the way out, however it exits: the services let go of what they hold. */
static void
worker_exit(int code, Datum arg)
{
	int			i;

	for (i = 0; i < nservices; i++)
		if (services[i]->stop != NULL)
			services[i]->stop();
}

static void
worker_nothing(EsStore *s, void *arg)
{
}

/*
 * A pass of process name: its services, when the worker is enabled and the
 * extension installed.  Returns how long to sleep.  announce: the process
 * that logs what it does (process 0).
 */
static long
worker_pass(const char *name, bool announce, bool *warned_not_installed)
{
	bool		installed = false;
	bool		reads_appends = false;
	long		timeout = es_worker_poll_interval;
	int			i;

	if (es_worker_enabled)
		(void) es_step_in_transaction(worker_nothing, NULL, true, &installed, NULL, NULL);
	if (!es_worker_enabled || !installed)
	{
		/* Nothing to do: what the services hold outside is not left unpolled. */
		worker_exit(0, (Datum) 0);
		if (announce)
			worker_reads_appends(false);
		if (!es_worker_enabled)
			return es_worker_poll_interval;
		if (announce && !*warned_not_installed)
			ereport(LOG,
					(errmsg("ultracore_es worker: extension ultracore_es is not installed in database \"%s\"",
							es_worker_database),
					 errhint("Run CREATE EXTENSION ultracore_es in that database, or set ultracore_es.database.")));
		*warned_not_installed = true;
		return NOT_INSTALLED_NAP_MS;
	}
	*warned_not_installed = false;
	for (i = 0; i < nservices; i++)
	{
		bool		reads = false;

		if (strcmp(services[i]->process, name) != 0)
			continue;
		CHECK_FOR_INTERRUPTS();
		pgstat_report_activity(STATE_RUNNING, psprintf("ultracore_es: %s", services[i]->name));
		timeout = Min(timeout, services[i]->pass(&reads));
		reads_appends = reads_appends || reads;
	}
	if (announce)
		worker_reads_appends(reads_appends);
	/* Table statistics, for autovacuum of what the passes wrote (at most once a second). */
	pgstat_report_stat(false);
	return Max(timeout, 0);
}

/* A descriptor of process name's services to sleep on; -1: none. */
static int
worker_wait_fd(const char *name)
{
	int			i;

	for (i = 0; i < nservices; i++)
		if (strcmp(services[i]->process, name) == 0 && services[i]->wait_fd != NULL &&
			services[i]->wait_fd() >= 0)
			return services[i]->wait_fd();
	return -1;
}

/*
 * es_worker_main: the entry point of every process; bgw_main_arg says which
 * (es_worker_register).
 */
void
es_worker_main(Datum arg)
{
	const char *names[MAX_SERVICES];
	int			counts[MAX_SERVICES];
	int			nprocesses = worker_processes(names, counts);
	int			process = DatumGetInt32(arg) / 1000;
	const char *name;
	bool		announce = (process == 0);
	MemoryContext pass_cxt;
	bool		warned_not_installed = false;
	bool		was_enabled = es_worker_enabled;

	if (process >= nprocesses)
		elog(FATAL, "ultracore_es: no process %d", process);
	name = names[process];
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(es_worker_database, NULL, 0);
	pgstat_report_appname(psprintf("ultracore_es %s", name));
	/* Passes are READ COMMITTED and read-write, whatever the server's defaults. */
	SetConfigOption("default_transaction_isolation", "read committed", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("default_transaction_read_only", "off", PGC_SUSET, PGC_S_OVERRIDE);
	if (announce)
		worker_announce();
	before_shmem_exit(worker_exit, (Datum) 0);
	if (announce)
		ereport(LOG,
				(errmsg("ultracore_es worker started for database \"%s\"", es_worker_database)));

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
		long		timeout;
		int			fd;

		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			if (es_worker_enabled != was_enabled && announce)
				ereport(LOG,
						(errmsg("ultracore_es worker %s delivering events (ultracore_es.worker_enabled is %s)",
								es_worker_enabled ? "resumes" : "stops",
								es_worker_enabled ? "on" : "off")));
			was_enabled = es_worker_enabled;
		}
		MemoryContextReset(pass_cxt);
		MemoryContextSwitchTo(pass_cxt);
		timeout = worker_pass(name, announce, &warned_not_installed);
		pgstat_report_activity(STATE_IDLE, NULL);
		fd = worker_wait_fd(name);
		if (fd >= 0)
			(void) WaitLatchOrSocket(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH | WL_SOCKET_READABLE,
									 fd, timeout, PG_WAIT_EXTENSION);
		else
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 timeout, PG_WAIT_EXTENSION);
	}
}
