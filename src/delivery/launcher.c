/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The launcher: one process per server (started by the postmaster when
 *	  the library is preloaded) that starts and stops the workers of every
 *	  database with the extension; and the hook that tells it when a
 *	  database gets or loses the extension, or is about to be dropped.
 *
 * The launcher connects to no database: it reads pg_database, a shared
 * catalog.  A database it has not seen yet is probed: its first delivery
 * worker is started, finds whether the extension is installed, and marks
 * the database present (the launcher then starts the rest: the delivery
 * pool, and where Kafka is served, the mirror and the ingest workers) or
 * absent (it exits; nothing runs there until CREATE EXTENSION, which the
 * hook below announces at commit, or a reload of the settings).  So no
 * database is polled: each is probed once, and after that only changes
 * wake the launcher.  Workers are dynamic background workers that the
 * launcher is notified about when they start and stop; one that fails is
 * started again after a backoff.  ultracore_es.database, when set, limits
 * the databases served.
 *
 * A database whose workers are connected cannot be dropped, renamed, moved
 * to another tablespace or used as a template: the hook holds it (no
 * worker starts), asks its workers to exit, and lets the command wait for
 * them as it waits for any session; the hold ends with the transaction.
 * DROP EXTENSION holds its database too: a worker's query would otherwise
 * take the extension's tables in another order than the drop, and one of
 * the two would end in a deadlock.
 * A database dropped frees what shared memory kept for its store
 * (partitions.c's overflow slot), once the drop has gone through.
 *
 * Locking: see worker_internal.h.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "delivery/worker_internal.h"

#include <signal.h>

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_database.h"
#include "catalog/pg_extension.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "core/guc.h"
#include "core/partitions.h"
#include "delivery/sequencer.h"

/* The longest the launcher sleeps: it looks at pg_database this often. */
#define LAUNCHER_NAP_MS		10000

/* A worker that failed is started again after this long, doubled each time up to a minute. */
#define RESTART_MS			5000
#define RESTART_MAX_MS		60000

/* The launcher's handles of the workers it registered, by slot. */
static BackgroundWorkerHandle **handles = NULL;

/* Whether the launcher warned that no background worker slot was free. */
static bool warned_no_slot = false;

static ProcessUtility_hook_type prev_utility_hook = NULL;
static object_access_hook_type prev_object_access_hook = NULL;

/* The database the DROP DATABASE under way drops, as its drop hook named it. */
static Oid	dropping_database = InvalidOid;

/* es_launcher_wake: the launcher has something to look at. */
void
es_launcher_wake(void)
{
	Latch	   *latch;

	if (es_worker_shared == NULL)
		return;
	latch = es_worker_shared->launcher_latch;
	pg_read_barrier();
	if (latch != NULL)
		SetLatch(latch);
}

/*-------------------------------------------------------------------------
 * Databases
 *-------------------------------------------------------------------------
 */

/*
 * The next name of a comma-separated list at *p: false at its end, else
 * *name and *len (blanks around it trimmed, never empty) and *p past it.
 */
static bool
next_listed_name(const char **p, const char **name, size_t *len)
{
	while (**p)
	{
		size_t		n;

		while (**p == ' ' || **p == '\t' || **p == ',')
			(*p)++;
		n = strcspn(*p, ",");
		*name = *p;
		*len = n;
		*p += n;
		while (*len > 0 && ((*name)[*len - 1] == ' ' || (*name)[*len - 1] == '\t'))
			(*len)--;
		if (*len > 0)
			return true;
	}
	return false;
}

/* Whether ultracore_es.database (a comma-separated list; empty: all) lets name in. */
static bool
launcher_serves(const char *name)
{
	const char *p = es_worker_database ? es_worker_database : "";
	const char *listed;
	size_t		len;
	bool		empty = true;

	while (next_listed_name(&p, &listed, &len))
	{
		empty = false;
		if (strlen(name) == len && strncmp(name, listed, len) == 0)
			return true;
	}
	return empty;
}

/*
 * What the settings ask for and the server cannot give yet, said once at
 * start and after each reload, instead of a worker failing every few
 * seconds: a database named by ultracore_es.database or
 * ultracore_es.kafka_database that does not exist (it is served once it is
 * created), ingest topics without brokers.  existing: every database's name.
 */
static void
launcher_report_settings(List *existing)
{
	const char *p = es_worker_database ? es_worker_database : "";
	const char *listed;
	size_t		len;
	const char *kafka_database = es_kafka_database_name();

	while (next_listed_name(&p, &listed, &len))
	{
		char	   *name = pnstrdup(listed, len);

		if (!list_member(existing, makeString(name)))
			ereport(LOG,
					(errmsg("ultracore_es launcher: database \"%s\" of ultracore_es.database does not exist", name),
					 errdetail("It is served once it is created.")));
	}
	if (es_kafka_brokers != NULL && es_kafka_brokers[0] != '\0' &&
		!list_member(existing, makeString(pstrdup(kafka_database))))
		ereport(LOG,
				(errmsg("ultracore_es launcher: database \"%s\" that Kafka serves does not exist", kafka_database),
				 errdetail("The Kafka mirror and ingest start once it is created with the extension.")));
	if ((es_kafka_brokers == NULL || es_kafka_brokers[0] == '\0') &&
		es_kafka_ingest_topics != NULL && es_kafka_ingest_topics[0] != '\0')
		ereport(LOG,
				(errmsg("ultracore_es launcher: ultracore_es.kafka_ingest_topics is set but ultracore_es.kafka_brokers is empty"),
				 errdetail("Nothing is ingested until brokers are set.")));
}

/* Whether the settings were reported since the last start or reload. */
static bool settings_reported = false;

static DatabaseEntry *
database_find(Oid oid)
{
	int			i;

	for (i = 0; i < MAX_DATABASES; i++)
		if (es_worker_shared->databases[i].oid == oid)
			return &es_worker_shared->databases[i];
	return NULL;
}

/*
 * Read pg_database: the databases served get an entry (new ones to be
 * probed), entries of databases gone or no longer served are freed.
 */
static void
launcher_scan_databases(void)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	int			i;
	List	   *existing = NIL;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	LWLockAcquire(es_worker_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < MAX_DATABASES; i++)
		es_worker_shared->databases[i].seen = false;
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (HeapTupleIsValid(tup = heap_getnext(scan, ForwardScanDirection)))
	{
		Form_pg_database pgdb = (Form_pg_database) GETSTRUCT(tup);
		DatabaseEntry *db;

		if (!settings_reported)
			existing = lappend(existing, makeString(pstrdup(NameStr(pgdb->datname))));
		if (!pgdb->datallowconn || pgdb->datistemplate || !launcher_serves(NameStr(pgdb->datname)))
			continue;
		db = database_find(pgdb->oid);
		if (db == NULL && (db = database_find(InvalidOid)) != NULL)
		{
			memset(db, 0, sizeof(*db));
			db->oid = pgdb->oid;
			db->state = DB_UNKNOWN;
		}
		if (db == NULL)
		{
			ereport(WARNING,
					(errmsg("ultracore_es launcher: more than %d databases, database \"%s\" is not served",
							MAX_DATABASES, NameStr(pgdb->datname)),
					 errhint("Limit the databases served with ultracore_es.database.")));
			continue;
		}
		strlcpy(db->name, NameStr(pgdb->datname), sizeof(db->name));
		db->seen = true;
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	for (i = 0; i < MAX_DATABASES; i++)
		if (es_worker_shared->databases[i].oid != InvalidOid && !es_worker_shared->databases[i].seen &&
			es_worker_shared->databases[i].held_by == 0)
			es_worker_shared->databases[i].oid = InvalidOid;
	LWLockRelease(es_worker_shared->lock);
	if (!settings_reported)
		launcher_report_settings(existing);
	settings_reported = true;
	CommitTransactionCommand();
}

/*-------------------------------------------------------------------------
 * Workers
 *-------------------------------------------------------------------------
 */

/*
 * Whether the worker of slot i stopped.  Its handle says so; a worker that
 * an earlier launcher started (it has no handle here) has stopped once it
 * recorded its exit, or when it never ran although a minute passed.
 */
static bool
launcher_stopped(int i, TimestampTz launcher_started_at)
{
	WorkerSlot *slot = &es_worker_shared->slots[i];
	pid_t		pid;

	if (handles[i] != NULL)
	{
		if (GetBackgroundWorkerPid(handles[i], &pid) != BGWH_STOPPED)
			return false;
		pfree(handles[i]);
		handles[i] = NULL;
		return true;
	}
	return slot->in_use && slot->pid == 0 &&
		(slot->last_exit_at >= slot->registered_at ||
		 TimestampDifferenceExceeds(launcher_started_at, GetCurrentTimestamp(), 60000));
}

/*
 * Free the slots of workers that stopped, noting when a failed one may
 * start again.  A worker that exited on its own records why (last_exit);
 * any other exit counts as a failure.
 */
static void
launcher_reap(void)
{
	int			i;

	for (i = 0; i < es_worker_shared->nslots; i++)
	{
		WorkerSlot *slot = &es_worker_shared->slots[i];

		if (!launcher_stopped(i, es_worker_shared->launcher_started_at))
			continue;
		LWLockAcquire(es_worker_shared->lock, LW_EXCLUSIVE);
		slot->in_use = false;
		if (slot->last_exit_at < slot->registered_at || strncmp(slot->last_exit, "exited with code", 16) == 0)
		{
			int			delay;

			/* One that ran a while before failing is not in a series of failures. */
			if (TimestampDifferenceExceeds(slot->registered_at, GetCurrentTimestamp(), RESTART_MAX_MS))
				slot->failures = 0;
			delay = Min(RESTART_MS << Min(slot->failures, 4), RESTART_MAX_MS);
			slot->failures++;
			slot->start_after = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), delay);
		}
		else
		{
			slot->failures = 0;
			slot->start_after = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 1000);
		}
		LWLockRelease(es_worker_shared->lock);
	}
}

/*
 * How readily an idle slot serves another worker: one never used, or whose
 * database is no longer served, first; then one of a database without the
 * extension; then any other whose worker may start again now (its history
 * goes with it).  -1: not at all (in use, or its worker waits for a
 * restart).
 */
static int
launcher_slot_rank(int i, TimestampTz now)
{
	WorkerSlot *slot = &es_worker_shared->slots[i];
	DatabaseEntry *db;

	if (slot->in_use || handles[i] != NULL)
		return -1;
	if (slot->member == 0 || (db = database_find(slot->database)) == NULL)
		return 0;
	if (db->state == DB_ABSENT)
		return 1;
	return slot->start_after <= now ? 2 : -1;
}

/*
 * The slot of member of service in db: the one it had before (which keeps
 * its last exit and backoff), else the idle one that serves most readily.
 * NULL when it runs, or none is free.  Caller holds the lock.
 */
static WorkerSlot *
launcher_slot(Oid db, int service, int member, TimestampTz now, int *index)
{
	int			free_slot = -1;
	int			free_rank = INT_MAX;
	int			i;

	for (i = 0; i < es_worker_shared->nslots; i++)
	{
		WorkerSlot *slot = &es_worker_shared->slots[i];
		int			rank;

		if (slot->database == db && slot->service == service && slot->member == member)
		{
			if (slot->in_use)
				return NULL;
			*index = i;
			return slot;
		}
		rank = launcher_slot_rank(i, now);
		if (rank >= 0 && rank < free_rank)
		{
			free_slot = i;
			free_rank = rank;
		}
	}
	if (free_slot < 0)
		return NULL;
	*index = free_slot;
	/* A slot another worker had: nothing of its past is kept. */
	memset(&es_worker_shared->slots[free_slot], 0, sizeof(WorkerSlot));
	pg_atomic_init_u32(&es_worker_shared->slots[free_slot].reads_appends, 0);
	pg_atomic_init_u64(&es_worker_shared->slots[free_slot].passes, 0);
	es_worker_shared->slots[free_slot].database = db;
	es_worker_shared->slots[free_slot].service = service;
	es_worker_shared->slots[free_slot].member = member;
	return &es_worker_shared->slots[free_slot];
}

/* Start member of service in database db, into slot index. */
static void
launcher_start_worker(DatabaseEntry *db, int service, int member, int index)
{
	BackgroundWorker worker;
	const EsWorkerService *s = es_worker_service(service);
	MemoryContext old;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	worker.bgw_main_arg = Int32GetDatum(index);
	worker.bgw_notify_pid = MyProcPid;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "ultracore_es");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "es_worker_main");
	snprintf(worker.bgw_type, BGW_MAXLEN, "ultracore_es %s", s->name);
	snprintf(worker.bgw_name, BGW_MAXLEN, "ultracore_es %s %d (%s)", s->name, member, db->name);
	old = MemoryContextSwitchTo(TopMemoryContext);
	if (!RegisterDynamicBackgroundWorker(&worker, &handles[index]))
	{
		handles[index] = NULL;
		es_worker_shared->slots[index].in_use = false;
		es_worker_shared->slots[index].start_after =
			TimestampTzPlusMilliseconds(GetCurrentTimestamp(), RESTART_MS);
		if (!warned_no_slot)
			ereport(WARNING,
					(errmsg("ultracore_es launcher: no background worker slot free for %s in database \"%s\"",
							worker.bgw_name, db->name),
					 errhint("Raise max_worker_processes: the launcher, ultracore_es.delivery_workers per database, and the Kafka workers each take one.")));
		warned_no_slot = true;
	}
	MemoryContextSwitchTo(old);
}

/*
 * Start the workers the databases want and do not have: a probe (the first
 * delivery worker) where the state is unknown, every service's processes
 * where the extension is present.  Returns when the launcher should look
 * again, at the latest.
 */
static TimestampTz
launcher_start(void)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz next = TimestampTzPlusMilliseconds(now, LAUNCHER_NAP_MS);
	const char *kafka_database = es_kafka_database_name();
	int			d;

	LWLockAcquire(es_worker_shared->lock, LW_EXCLUSIVE);
	for (d = 0; d < MAX_DATABASES; d++)
	{
		DatabaseEntry *db = &es_worker_shared->databases[d];
		int			service;

		if (db->oid == InvalidOid || db->held_by != 0 || db->state == DB_ABSENT)
			continue;
		for (service = 0; service < es_worker_nservices(); service++)
		{
			int			wanted = db->state == DB_UNKNOWN ? (service == 0 ? 1 : 0)
				: es_worker_service(service)->wanted(strcmp(db->name, kafka_database) == 0);
			int			member;

			for (member = 1; member <= wanted; member++)
			{
				int			index;
				WorkerSlot *slot = launcher_slot(db->oid, service, member, now, &index);

				if (slot == NULL)
					continue;
				if (slot->start_after > now)
				{
					next = Min(next, slot->start_after);
					continue;
				}
				slot->in_use = true;
				slot->registered_at = now;
				launcher_start_worker(db, service, member, index);
			}
		}
	}
	LWLockRelease(es_worker_shared->lock);
	return next;
}

/* On the way out: the launcher's latch goes. */
static void
launcher_unannounce(int code, Datum arg)
{
	LWLockAcquire(es_worker_shared->lock, LW_EXCLUSIVE);
	es_worker_shared->launcher_pid = 0;
	es_worker_shared->launcher_latch = NULL;
	LWLockRelease(es_worker_shared->lock);
}

/*
 * es_launcher_main: the launcher's entry point.  Its workers are dynamic
 * background workers: they end with the server, or when the launcher's
 * databases no longer want them.
 */
void
es_launcher_main(Datum arg)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("ultracore_es launcher");
	handles = MemoryContextAllocZero(TopMemoryContext, sizeof(BackgroundWorkerHandle *) * es_worker_shared->nslots);

	LWLockAcquire(es_worker_shared->lock, LW_EXCLUSIVE);
	es_worker_shared->launcher_started_at = GetCurrentTimestamp();
	es_worker_shared->launcher_latch = MyLatch;
	es_worker_shared->launcher_pid = MyProcPid;
	LWLockRelease(es_worker_shared->lock);
	on_shmem_exit(launcher_unannounce, (Datum) 0);
	ereport(LOG, (errmsg("ultracore_es launcher started")));

	for (;;)
	{
		TimestampTz next;
		long		timeout;

		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			int			i;

			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			/* A reload probes the databases without the extension again. */
			LWLockAcquire(es_worker_shared->lock, LW_EXCLUSIVE);
			for (i = 0; i < MAX_DATABASES; i++)
				if (es_worker_shared->databases[i].state == DB_ABSENT)
					es_worker_shared->databases[i].state = DB_UNKNOWN;
			LWLockRelease(es_worker_shared->lock);
			warned_no_slot = false;
			settings_reported = false;
		}
		launcher_scan_databases();
		launcher_reap();
		next = launcher_start();
		timeout = Max(10, (long) ((next - GetCurrentTimestamp()) / 1000));
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, timeout,
						 PG_WAIT_EXTENSION);
	}
}

/*-------------------------------------------------------------------------
 * What wakes the launcher: the extension created or dropped, a database
 * about to be dropped (or renamed, moved, copied)
 *-------------------------------------------------------------------------
 */

/*
 * At commit: the extension was created (the database is probed) or dropped
 * here.  The nesting level of the (sub)transaction that did it, 0 if none:
 * a rolled-back subtransaction undoes it.
 */
static int	created_level = 0;
static int	dropped_level = 0;

/*
 * The databases this backend holds until its transaction ends, or until
 * the subtransaction that took the first hold (at hold_level) aborts.
 */
static bool holding = false;
static int	hold_level = 0;

/*
 * Whether the caller may run the command on database dbname (as_template:
 * copy it) that would hold it: its workers are stopped before the command's
 * own checks run, which would be too late for a role that may not.
 */
static bool
launcher_may_hold(const char *dbname, bool as_template)
{
	Oid			oid = dbname != NULL ? get_database_oid(dbname, true) : InvalidOid;
	HeapTuple	tup;
	bool		is_template;

	if (!OidIsValid(oid))
		return false;
	if (pg_database_ownercheck(oid, GetUserId()))
		return !as_template || have_createdb_privilege();
	if (!as_template)
		return false;
	tup = SearchSysCache1(DATABASEOID, ObjectIdGetDatum(oid));
	if (!HeapTupleIsValid(tup))
		return false;
	is_template = ((Form_pg_database) GETSTRUCT(tup))->datistemplate;
	ReleaseSysCache(tup);
	return is_template && have_createdb_privilege();
}

static bool
statement_names_extension(List *objects)
{
	ListCell   *lc;

	foreach(lc, objects)
		if (strcmp(strVal(lfirst(lc)), "ultracore_es") == 0)
			return true;
	return false;
}

/*
 * Hold database name (or oid): no worker starts there, and those running
 * are asked to exit (SIGTERM; their slots say why, which is no failure).
 * The command that needs the database without connections would wait for
 * them as for any session (five seconds); they are waited for here first,
 * as long, so that it finds them gone.
 */
static void
launcher_hold(const char *name, Oid oid)
{
	int		   *pids;
	int			npids = 0;
	int			waited;
	int			i;

	if ((name == NULL && oid == InvalidOid) || es_worker_shared == NULL)
		return;
	pids = palloc(sizeof(int) * es_worker_shared->nslots);
	LWLockAcquire(es_worker_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < MAX_DATABASES; i++)
	{
		DatabaseEntry *db = &es_worker_shared->databases[i];
		int			j;

		if (db->oid == InvalidOid || (name != NULL ? strcmp(db->name, name) != 0 : db->oid != oid))
			continue;
		db->held_by = MyProcPid;
		if (!holding)
			hold_level = GetCurrentTransactionNestLevel();
		holding = true;
		for (j = 0; j < es_worker_shared->nslots; j++)
		{
			WorkerSlot *slot = &es_worker_shared->slots[j];

			if (slot->database != db->oid || slot->pid == 0)
				continue;
			snprintf(slot->last_exit, sizeof(slot->last_exit), "asked to leave for %s by pid %d",
					 name != NULL ? "a command on its database" : "DROP EXTENSION", MyProcPid);
			slot->last_exit_at = GetCurrentTimestamp();
			pids[npids++] = slot->pid;
		}
	}
	LWLockRelease(es_worker_shared->lock);
	for (i = 0; i < npids; i++)
		(void) kill(pids[i], SIGTERM);
	for (waited = 0; npids > 0 && waited < 5000; waited += 10)
	{
		int			left = 0;

		CHECK_FOR_INTERRUPTS();
		LWLockAcquire(es_worker_shared->lock, LW_SHARED);
		for (i = 0; i < es_worker_shared->nslots; i++)
		{
			int			j;

			for (j = 0; j < npids; j++)
				if (es_worker_shared->slots[i].pid == pids[j])
					left++;
		}
		LWLockRelease(es_worker_shared->lock);
		if (left == 0)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 10, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	pfree(pids);
}

/* End this backend's holds; the launcher looks at the databases again. */
static void
launcher_release_holds(void)
{
	int			i;

	if (!holding || es_worker_shared == NULL)
		return;
	LWLockAcquire(es_worker_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < MAX_DATABASES; i++)
		if (es_worker_shared->databases[i].held_by == MyProcPid)
			es_worker_shared->databases[i].held_by = 0;
	LWLockRelease(es_worker_shared->lock);
	holding = false;
	es_launcher_wake();
}

/* The template a CREATE DATABASE copies, when it names one. */
static char *
createdb_template(CreatedbStmt *stmt)
{
	ListCell   *lc;

	foreach(lc, stmt->options)
	{
		DefElem    *opt = (DefElem *) lfirst(lc);

		if (strcmp(opt->defname, "template") == 0 && opt->arg != NULL)
			return defGetString(opt);
	}
	return NULL;
}

/* Whether an ALTER DATABASE moves the database to another tablespace. */
static bool
alterdb_moves(AlterDatabaseStmt *stmt)
{
	ListCell   *lc;

	foreach(lc, stmt->options)
		if (strcmp(((DefElem *) lfirst(lc))->defname, "tablespace") == 0)
			return true;
	return false;
}

static void
launcher_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
				 ProcessUtilityContext context, ParamListInfo params, QueryEnvironment *queryEnv,
				 DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;
	bool		top_level = (context == PROCESS_UTILITY_TOPLEVEL);
	const char *dbname;

	/*
	 * Workers are held only for a command that may run: by a role allowed
	 * to, and (as PostgreSQL checks after this hook) outside a transaction
	 * block where it must be.  Else any role could stop a database's
	 * workers with a command bound to fail.
	 */
	switch (nodeTag(parsetree))
	{
		case T_DropdbStmt:
			dropping_database = InvalidOid;
			dbname = ((DropdbStmt *) parsetree)->dbname;
			if (launcher_may_hold(dbname, false))
			{
				PreventInTransactionBlock(top_level, "DROP DATABASE");
				launcher_hold(dbname, InvalidOid);
			}
			break;
		case T_RenameStmt:
			dbname = ((RenameStmt *) parsetree)->subname;
			if (((RenameStmt *) parsetree)->renameType == OBJECT_DATABASE && launcher_may_hold(dbname, false))
				launcher_hold(dbname, InvalidOid);
			break;
		case T_AlterDatabaseStmt:
			dbname = ((AlterDatabaseStmt *) parsetree)->dbname;
			if (alterdb_moves((AlterDatabaseStmt *) parsetree) && launcher_may_hold(dbname, false))
			{
				PreventInTransactionBlock(top_level, "ALTER DATABASE SET TABLESPACE");
				launcher_hold(dbname, InvalidOid);
			}
			break;
		case T_CreatedbStmt:
			dbname = createdb_template((CreatedbStmt *) parsetree);
			if (launcher_may_hold(dbname, true))
			{
				PreventInTransactionBlock(top_level, "CREATE DATABASE");
				launcher_hold(dbname, InvalidOid);
			}
			break;
		case T_DropStmt:
			if (((DropStmt *) parsetree)->removeType == OBJECT_EXTENSION &&
				statement_names_extension(((DropStmt *) parsetree)->objects) &&
				pg_extension_ownercheck(get_extension_oid("ultracore_es", true), GetUserId()))
				launcher_hold(NULL, MyDatabaseId);
			break;
		default:
			break;
	}

	if (prev_utility_hook)
		prev_utility_hook(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);

	/*
	 * Dropped: the shared memory kept for the database goes with it (the
	 * drop hook named its OID; a name looked up before the drop could
	 * name another database by then).  Not in the hook: the drop can
	 * still fail after it, and the database then lives on with its slot.
	 */
	if (IsA(parsetree, DropdbStmt) && OidIsValid(dropping_database))
		es_overflow_forget(dropping_database);

	/* Readers of es_events_overflow look again where its rows may go in untold. */
	if (IsA(parsetree, AlterTableStmt))
		es_overflow_altered((AlterTableStmt *) parsetree);

	if (IsA(parsetree, CreateExtensionStmt) &&
		strcmp(((CreateExtensionStmt *) parsetree)->extname, "ultracore_es") == 0)
		created_level = GetCurrentTransactionNestLevel();
}

/*
 * At the end of a transaction: a created extension makes its database be
 * probed, a dropped one marks it absent (its workers left when it was
 * held); holds end.
 */
static void
launcher_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT && (created_level > 0 || dropped_level > 0) && es_worker_shared != NULL)
	{
		DatabaseEntry *db;

		LWLockAcquire(es_worker_shared->lock, LW_EXCLUSIVE);
		db = database_find(MyDatabaseId);
		if (db != NULL)
			db->state = created_level > 0 ? DB_UNKNOWN : DB_ABSENT;
		LWLockRelease(es_worker_shared->lock);
		es_launcher_wake();
	}
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT || event == XACT_EVENT_PREPARE ||
		event == XACT_EVENT_PARALLEL_ABORT)
	{
		created_level = 0;
		dropped_level = 0;
		launcher_release_holds();
	}
}

/* A subtransaction's end: what it did is undone, or now its parent's. */
static void
launcher_subxact_callback(SubXactEvent event, SubTransactionId mySubid, SubTransactionId parentSubid,
						  void *arg)
{
	int			level = GetCurrentTransactionNestLevel();

	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		if (created_level >= level)
			created_level = 0;
		if (dropped_level >= level)
			dropped_level = 0;
		/* The command that held failed: the workers may come back now. */
		if (holding && hold_level >= level)
			launcher_release_holds();
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		if (created_level >= level)
			created_level = level - 1;
		if (dropped_level >= level)
			dropped_level = level - 1;
		if (holding && hold_level >= level)
			hold_level = level - 1;
	}
}

/*
 * The drop hook: which database a DROP DATABASE drops; and the extension
 * dropped, however (DROP EXTENSION, or a cascade from DROP SCHEMA or DROP
 * OWNED): the database's slot goes too, or it would keep the WAL for
 * ever.  Its workers were held before a DROP EXTENSION (the utility hook);
 * before a cascade they are asked to leave here.
 */
static void
launcher_object_access(ObjectAccessType access, Oid classId, Oid objectId, int subId, void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);
	if (access == OAT_DROP && classId == DatabaseRelationId)
		dropping_database = objectId;
	if (access == OAT_DROP && classId == ExtensionRelationId &&
		objectId == get_extension_oid("ultracore_es", true))
	{
		if (!holding)
			launcher_hold(NULL, MyDatabaseId);
		dropped_level = GetCurrentTransactionNestLevel();
		es_sequencer_drop_slot();
	}
}

/* es_launcher_init: from _PG_init; the hooks only where the launcher runs (preloaded). */
void
es_launcher_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = launcher_utility;
	prev_object_access_hook = object_access_hook;
	object_access_hook = launcher_object_access;
	RegisterXactCallback(launcher_xact_callback, NULL);
	RegisterSubXactCallback(launcher_subxact_callback, NULL);
}
