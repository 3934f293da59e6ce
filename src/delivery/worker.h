/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  The background processes of ultracore_es (worker.c): what runs in
 *	  them plugs in as services, registered from _PG_init; the processes
 *	  know none of them.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_WORKER_H
#define ES_WORKER_H

#include "utils/timestamp.h"

/*
 * A service: work a background process does in passes.  Services name the
 * process that runs them; processes of one name run the services of that
 * name in their order of registration, each pass.
 */
typedef struct EsWorkerService
{
	const char *name;			/* shown in pg_stat_activity while it runs */
	const char *process;		/* the process that runs it, e.g. "worker" */
	int			processes;		/* how many such processes (the first service of a
								 * process decides) */

	/*
	 * One pass, in the process's per-pass memory context, outside any
	 * transaction, in a database where the extension is installed.
	 * Returns how long the process may sleep before the next pass, in
	 * milliseconds, and sets *reads_appends when commits that append
	 * should wake it (see es_worker_wake).
	 */
	long		(*pass) (bool *reads_appends);

	/* A descriptor that becomes readable when there is work; -1: none.  NULL: never. */
	int			(*wait_fd) (void);

	/*
	 * Let go of what the service holds outside the database (clients,
	 * connections): the worker is disabled, the extension is not
	 * installed, or the process exits.  May be called when holding
	 * nothing.
	 */
	void		(*stop) (void);
} EsWorkerService;

extern void es_worker_add_service(const EsWorkerService *service);
extern void es_worker_init(void);
extern void es_worker_register(void);
PGDLLEXPORT void es_worker_main(Datum arg);

extern void es_worker_wake_at_commit(void);
extern bool es_worker_status(int *pid, TimestampTz *started_at);

#endif							/* ES_WORKER_H */
