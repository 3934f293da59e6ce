/*-------------------------------------------------------------------------
 *
 * aggregate.h
 *	  The row of es_aggregates whose lock serializes an aggregate's writers
 *	  (aggregate.c).
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_AGGREGATE_H
#define ES_AGGREGATE_H

#include "access/transam.h"
#include "storage/itemptr.h"
#include "core/event.h"
#include "core/event_hash.h"
#include "core/store.h"
#include "utils/timestamp.h"

typedef struct EsAggregateRow
{
	char		aggregate_type[ES_MAX_NAME_LEN + 1];
	int64		version;		/* current version, 0 before the first event */
	FullTransactionId last_tx;	/* commit-order key (tx_id) of the last event */
	uint8		last_hash[ES_HASH_LEN]; /* its hash (es_hash_zero: none, or stored by 1.0) */
	int64		found_position; /* the last event's position (0: none) */
	int64		last_position;	/* es_aggregates.last_position (0: none; ES_HINT_UNREAD) */
	bool		hint_wanted;	/* finding the last event took probes of older partitions */
	ItemPointerData tid;		/* where the row was read under the lock (invalid: not read) */
} EsAggregateRow;

/* last_position when the row was not read: the last event was found without its hint. */
#define ES_HINT_UNREAD	(-1)

extern bool es_aggregate_lock(EsStore *s, const char *aggregate_id, EsAggregateRow *row);
extern bool es_aggregate_create(const char *aggregate_id, const char *aggregate_type,
								TimestampTz now);
extern void es_aggregate_moved(EsStore *s, const char *aggregate_id, const EsAggregateRow *row,
							   int64 last_position);
extern void es_aggregate_created(EsStore *s, const char *aggregate_id, int64 first, int64 last);
extern void es_aggregate_check_history(const char *aggregate_id);

#endif							/* ES_AGGREGATE_H */
