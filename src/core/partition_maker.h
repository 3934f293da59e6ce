/*-------------------------------------------------------------------------
 *
 * partition_maker.h
 *	  The partitions of es_events made ahead of the appends
 *	  (partition_maker.c).
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_PARTITION_MAKER_H
#define ES_PARTITION_MAKER_H

#include "core/store.h"

extern bool es_partitions_make(EsStore *s, int64 upto, bool wait, int *made);
extern bool es_partition_lock(Oid relid, bool wait);
extern void es_partition_exec(const char *sql);

#endif							/* ES_PARTITION_MAKER_H */
