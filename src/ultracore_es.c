/*-------------------------------------------------------------------------
 *
 * ultracore_es.c
 *	  Module entry point of ultracore_es, an event store for core banking
 *	  inside PostgreSQL.
 *
 * The library works both preloaded (shared_preload_libraries) and loaded on
 * first use after CREATE EXTENSION.  Preloaded, it also sets up shared memory
 * and registers the background worker; loaded late, the SQL API works and
 * the worker's features wait for a restart with the library preloaded.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "ultracore_es.h"

#include "miscadmin.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	es_guc_init();
	es_shmem_init();
	if (process_shared_preload_libraries_in_progress)
		es_worker_register();
	MarkGUCPrefixReserved("ultracore_es");
}
