/*-------------------------------------------------------------------------
 *
 * ultracore_es.c
 *	  Module entry point of ultracore_es, an event store for core banking
 *	  inside PostgreSQL.
 *
 * The library works both preloaded (shared_preload_libraries) and loaded on
 * first use after CREATE EXTENSION; _PG_init only defines settings, which is
 * safe in either case.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "ultracore_es.h"

#include "utils/guc.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	es_guc_init();
	MarkGUCPrefixReserved("ultracore_es");
}
