/*-------------------------------------------------------------------------
 *
 * guc.c
 *	  The ultracore_es.* settings.
 *
 * Contexts are chosen on purpose: limits that protect the store are SUSET, so
 * that an application role cannot lift them for its own session.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "ultracore_es.h"

#include "utils/guc.h"
#include "utils/memutils.h"

int			es_max_event_bytes = 1024 * 1024;

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
}
