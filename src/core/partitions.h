/*-------------------------------------------------------------------------
 *
 * partitions.h
 *	  The partitions of es_events as a backend reads and writes them
 *	  (partitions.c): their position ranges and the indexes the C paths
 *	  scan, and scans of an index of every partition merged into one order.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_PARTITIONS_H
#define ES_PARTITIONS_H

#include "access/genam.h"
#include "executor/tuptable.h"
#include "nodes/parsenodes.h"
#include "utils/rel.h"

#include "core/store.h"

/*
 * One partition of es_events, or es_events itself when it is a plain table
 * (a 1.0 catalog): the rows at from_position <= position < to_position, or
 * those of no other partition for the DEFAULT one.
 */
typedef struct EsPartition
{
	Oid			relid;
	bool		is_default;
	int64		from_position;	/* PG_INT64_MIN: MINVALUE */
	int64		to_position;	/* PG_INT64_MAX: MAXVALUE */
	Oid			version_idx;	/* unique (aggregate_id, version) */
	Oid			commit_idx;		/* (tx_id, position) */
	Oid			position_idx;	/* unique (position) */
	Oid			event_id_idx;	/* its own primary key (event_id): the 1.0 table's only */
} EsPartition;

typedef struct EsPartitions
{
	int			n;
	EsPartition *parts;			/* ranges by from_position, the DEFAULT last */
} EsPartitions;

/* Which index of each partition a merged scan reads (lookups by position: EsPositionLookup). */
typedef enum EsPartitionIndex
{
	ES_INDEX_VERSION,
	ES_INDEX_COMMIT
} EsPartitionIndex;

extern void es_partitions_init(void);
extern bool es_overflow_known_empty(void);
extern bool es_overflow_may_hold(int64 from);
extern void es_overflow_filling(int64 position);
extern void es_overflow_measure(const EsPartition *part);
extern void es_overflow_forget(Oid dbid);
extern void es_overflow_altered(AlterTableStmt *stmt);
extern const EsPartitions *es_partitions(EsStore *s, Relation events);
extern const EsPartition *es_partition_of(const EsPartitions *p, int64 position);

typedef struct EsPositionLookup EsPositionLookup;

extern EsPositionLookup *es_position_lookup_begin(EsStore *s, Relation events, Snapshot snapshot);
extern TupleTableSlot *es_position_lookup(EsPositionLookup *l, int64 position);
extern void es_position_lookup_end(EsPositionLookup *l);
extern HeapTuple es_event_by_position(EsStore *s, Relation events, int64 position, Snapshot snapshot);
extern void es_aggregate_id_key(ScanKey key, const char *aggregate_id);
extern HeapTuple es_last_event_recent(EsStore *s, Relation events, const char *aggregate_id,
									   Snapshot snapshot, int64 *none_from);
extern HeapTuple es_last_event(EsStore *s, Relation events, const char *aggregate_id, int64 hint,
							   int64 none_from, Snapshot snapshot, int *searched);
extern bool es_partitions_apart(EsStore *s, Relation events, int64 a, int64 b);
extern bool es_partitions_keep_ids(EsStore *s);
extern HeapTuple es_event_by_id(EsStore *s, Relation events, const char *event_id, Snapshot snapshot);

typedef struct EsMergedScan EsMergedScan;

extern EsMergedScan *es_merged_scan_begin(EsStore *s, Relation events, EsPartitionIndex which,
										  Snapshot snapshot, ScanKey keys, int nkeys,
										  ScanDirection direction);
extern TupleTableSlot *es_merged_scan_next(EsMergedScan *scan);
extern void es_merged_scan_end(EsMergedScan *scan);

#endif							/* ES_PARTITIONS_H */
