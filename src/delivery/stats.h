/*-------------------------------------------------------------------------
 *
 * stats.h
 *	  Statistics in shared memory (stats.c): committed appends, the commit
 *	  times of recent commit-order keys, and each consumer's
 *	  commit-to-applied latencies.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_STATS_H
#define ES_STATS_H

#include "access/transam.h"
#include "utils/timestamp.h"

extern void es_stats_init(void);
extern TimestampTz es_stats_commit_time(FullTransactionId key, TimestampTz fallback);
extern void es_stats_record_applied(const char *consumer, int n, const uint64 *latencies_us,
									TimestampTz now);
extern void es_stats_note_projected(const char *projection, int n);

#endif							/* ES_STATS_H */
