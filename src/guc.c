/*-------------------------------------------------------------------------
 *
 * guc.c
 *	  The ultracore_es.* settings.
 *
 * Contexts are chosen on purpose: limits that protect the store are SUSET, so
 * that an application role cannot lift them for its own session; the
 * worker's database is POSTMASTER (the worker connects once), so it exists
 * only when the library is preloaded; what the worker loop reads each pass
 * is SIGHUP.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "ultracore_es.h"

#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/memutils.h"

int			es_max_event_bytes = 1024 * 1024;
char	   *es_worker_database = NULL;
bool		es_worker_enabled = true;
int			es_worker_poll_interval = 1000;
int			es_worker_batch_size = 1000;
int			es_handled_retention = 7 * 24 * 3600;

void
es_guc_init(void)
{
	DefineCustomIntVariable("ultracore_es.max_event_bytes",
							"Largest event accepted, data and metadata together.",
							"Appends of larger events are refused with SQLSTATE 54000.",
							&es_max_event_bytes,
							1024 * 1024,
							1024,
							MaxAllocSize / 2,
							PGC_SUSET,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	/* A POSTMASTER setting can only be defined while preloading. */
	if (process_shared_preload_libraries_in_progress)
		DefineCustomStringVariable("ultracore_es.database",
								   "Database whose event store the background worker serves.",
								   "The worker starts only when ultracore_es is in shared_preload_libraries.",
								   &es_worker_database,
								   "postgres",
								   PGC_POSTMASTER,
								   0,
								   NULL, NULL, NULL);

	DefineCustomBoolVariable("ultracore_es.worker_enabled",
							 "Whether the background worker delivers events to consumers.",
							 NULL,
							 &es_worker_enabled,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("ultracore_es.worker_poll_interval",
							"Longest the worker sleeps between passes when no commit wakes it.",
							"Commits that append wake the worker at once; this is the fallback.",
							&es_worker_poll_interval,
							1000,
							10,
							3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("ultracore_es.worker_batch_size",
							"Most events a consumer applies in one transaction.",
							NULL,
							&es_worker_batch_size,
							1000,
							1,
							100000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("ultracore_es.handled_retention",
							"How long the idempotency records of applied events are kept.",
							"0 keeps them forever.  Records older than this are deleted by the worker.",
							&es_handled_retention,
							7 * 24 * 3600,
							0,
							INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);
}
