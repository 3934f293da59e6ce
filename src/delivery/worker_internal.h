/*-------------------------------------------------------------------------
 *
 * worker_internal.h
 *	  The shared memory of the background processes, as the launcher
 *	  (launcher.c) and the workers (worker.c) share it.  Nothing else
 *	  includes it.
 *
 * Locking: the LWLock guards the databases, the slots' assignments and the
 * claims.  A slot's pid, latch and reads_appends are written by its process
 * and read without the lock by committing backends (a stale latch is
 * harmless: setting the latch of a process that just exited wakes nobody).
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_WORKER_INTERNAL_H
#define ES_WORKER_INTERNAL_H

#include "port/atomics.h"
#include "postmaster/bgworker.h"
#include "storage/latch.h"
#include "storage/lwlock.h"

#include "delivery/worker.h"

#define MAX_SERVICES		8
#define MAX_DATABASES		1024

/* What the launcher knows of a database. */
typedef enum EsDatabaseState
{
	DB_UNKNOWN,					/* to be probed: a worker is started to look */
	DB_PRESENT,					/* has the extension: its workers run */
	DB_ABSENT					/* has not: nothing runs until a CREATE EXTENSION */
} EsDatabaseState;

typedef struct DatabaseEntry
{
	Oid			oid;			/* InvalidOid: free */
	char		name[NAMEDATALEN];
	EsDatabaseState state;
	int			held_by;		/* a backend running DDL that needs the database
								 * without connections (DROP DATABASE, ...): no
								 * worker starts while it is not 0 */
	bool		seen;			/* in the launcher's last scan of pg_database */
} DatabaseEntry;

/* A process of a service in a database, started by the launcher. */
/*
 * What new events wake a worker: none, any commit that appended, or (its
 * units reading the commit log) the sequencer's numbering alone.
 */
#define READS_NOTHING	0
#define READS_APPENDS	1
#define READS_LOG		2

typedef struct WorkerSlot
{
	bool		in_use;			/* assigned by the launcher */
	int			service;		/* index of the service */
	int			member;			/* 1, 2, ... */
	Oid			database;
	int			pid;			/* written by the process; 0 until it runs */
	Latch	   *latch;
	pg_atomic_uint32 reads_appends;	/* READS_NOTHING, READS_APPENDS or READS_LOG */
	pg_atomic_uint64 passes;	/* loops done, run or not: proof it looked */
	TimestampTz registered_at;	/* when the launcher asked the postmaster to start it */
	TimestampTz started_at;		/* when the process began to run */
	TimestampTz start_after;	/* after a failure: not before */
	char		claim[NAMEDATALEN]; /* the consumer it serves; "" none */
	int			claim_segment;
	char		busy[NAMEDATALEN + 32];
	TimestampTz busy_since;
	char		last_exit[128];
	TimestampTz last_exit_at;
	int			failures;		/* in a row, for the restart backoff */
} WorkerSlot;

typedef struct WorkerShared
{
	LWLock	   *lock;
	int			launcher_pid;
	Latch	   *launcher_latch;
	TimestampTz launcher_started_at;
	DatabaseEntry databases[MAX_DATABASES];
	int			nslots;
	WorkerSlot	slots[FLEXIBLE_ARRAY_MEMBER];
} WorkerShared;

extern WorkerShared *es_worker_shared;

extern int	es_worker_nservices(void);
extern const EsWorkerService *es_worker_service(int i);
extern void es_launcher_wake(void);
extern void es_launcher_init(void);
PGDLLEXPORT void es_launcher_main(Datum arg);
PGDLLEXPORT void es_worker_main(Datum arg);

#endif							/* ES_WORKER_INTERNAL_H */
