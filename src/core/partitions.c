/*-------------------------------------------------------------------------
 *
 * partitions.c
 *	  The partitions of es_events as the C paths see them: each with its
 *	  position range and the indexes they scan, cached per backend; and
 *	  index scans of every partition merged into one order.
 *
 * es_events is partitioned by position (1.1): ranges made ahead by the
 * worker, the DEFAULT es_events_overflow for appends past them, and, in a
 * store updated from 1.0, the 1.0 table es_events_1_0 (with its own
 * primary key on event_id).  A 1.0 catalog's es_events is a plain table:
 * it is then the one "partition", so that the same code serves both.
 *
 * The unique indexes that PostgreSQL cannot give a partitioned table (one
 * without the partition key) are per partition here: (aggregate_id,
 * version) in each, unique across them by the aggregate's lock.  A read
 * of an aggregate or in commit order scans that index of every partition
 * and merges the rows (es_merged_scan_*): an aggregate's events can lie in
 * any of them, and the DEFAULT partition holds positions between ranges.
 *
 * The cache is rebuilt after a relcache invalidation of es_events (which
 * every ATTACH, DETACH and DROP of a partition sends) or of a partition,
 * read from the queue at each call (es_partitions).  Callers open
 * es_events first, with the lock they need, and take their snapshot
 * before they ask for the partitions.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "core/partitions.h"

#include "access/htup_details.h"
#include "access/relscan.h"
#include "catalog/pg_am.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/pg_class.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_index.h"
#include "commands/trigger.h"
#include "lib/binaryheap.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/bufmgr.h"
#include "storage/spin.h"
#include "nodes/parsenodes.h"
#include "partitioning/partdesc.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/xid8.h"

#include "core/event.h"
#include "core/shmem.h"

/*
 * Whether es_events_overflow, the DEFAULT partition, is known empty, per
 * database, in shared memory.  Known empty, the readers leave it alone: an
 * ATTACH takes it ACCESS EXCLUSIVE, and every read of an aggregate and in
 * commit order would otherwise hold it and keep the partition maker out
 * (or, were it to queue, wait behind it).  Cleared (maybe rows) by every
 * insert into it before the row goes in: the C inserter, and a trigger for
 * SQL (a restore's COPY, an owner's INSERT); set by the partition maker
 * only while it holds the table SHARE (no insert under way) and finds no
 * block in it.  A reader reads it after taking its snapshot: a row there
 * that the snapshot sees was inserted, so the flag cleared, before.
 * Without preloading, or with more databases than slots: not known.
 * A database's slot is freed when the database is dropped (launcher.c's
 * hook on DROP DATABASE), so that the slots serve the databases that
 * exist, not the first 64 since the server started.
 *
 * Beside it, the highest position it may hold (top), raised by the same
 * inserts before their row goes in, and read by the partition maker from
 * its position index, under the same SHARE lock, when not known (after a
 * restart).  An append that found its aggregate's last event in a range
 * (that of the last position taken, or the one es_aggregates points to)
 * need not look in the DEFAULT partition when top is below that event: a
 * store whose first events went there before the worker made the first
 * range (they stay there) would otherwise pay a probe of it per append.
 */
#define OVERFLOW_SLOTS 64
#define OVERFLOW_TOP_UNKNOWN PG_INT64_MAX

typedef struct OverflowSlot
{
	pg_atomic_uint32 dbid;		/* 0: free */
	pg_atomic_uint32 empty;		/* 1: known empty */
	pg_atomic_uint64 top;		/* the highest position it may hold (int64) */
} OverflowSlot;

/*
 * A slot is taken and freed under the mutex: with slots freed, two
 * backends of one database looking for a free one at once could otherwise
 * take two, and one would clear a flag the other's readers never see.
 * freed counts the slots freed: a backend that found none free looks
 * again when it moved.
 */
typedef struct OverflowSlots
{
	slock_t		mutex;
	pg_atomic_uint64 freed;
	OverflowSlot slot[OVERFLOW_SLOTS];
} OverflowSlots;

static OverflowSlots *overflow_slots = NULL;

static HeapTuple partition_probe(Relation rel, Oid indexoid, Snapshot snapshot, ScanKey key,
								 ScanDirection direction);

static EsPartitions cache;
static Oid	cache_events_relid = InvalidOid;
static bool cache_valid = false;
static MemoryContext cache_cxt = NULL;

/*
 * Invalidations seen: one that arrives while the cache is being built (its
 * partitions are opened, and a lock taken processes the invalidations
 * queued) makes the build start again.
 */
static uint64 invalidations = 0;

static Size
overflow_shmem_size(void)
{
	return sizeof(OverflowSlots);
}

/* A slot that knows nothing of its database's partition: it may hold any row. */
static void
overflow_slot_unknown(OverflowSlot *slot)
{
	pg_atomic_write_u64(&slot->top, (uint64) OVERFLOW_TOP_UNKNOWN);
	pg_atomic_write_u32(&slot->empty, 0);
	pg_memory_barrier();
}

/* A slot that knows nothing of a database, and free. */
static void
overflow_slot_reset(OverflowSlot *slot)
{
	overflow_slot_unknown(slot);
	pg_atomic_write_u32(&slot->dbid, 0);
}

static void
overflow_shmem_init(void *segment)
{
	OverflowSlots *slots = (OverflowSlots *) segment;
	int			i;

	SpinLockInit(&slots->mutex);
	pg_atomic_init_u64(&slots->freed, 0);
	for (i = 0; i < OVERFLOW_SLOTS; i++)
	{
		pg_atomic_init_u32(&slots->slot[i].dbid, 0);
		pg_atomic_init_u32(&slots->slot[i].empty, 0);
		pg_atomic_init_u64(&slots->slot[i].top, (uint64) OVERFLOW_TOP_UNKNOWN);
	}
}

/* es_partitions_init: from _PG_init. */
void
es_partitions_init(void)
{
	es_shmem_add("ultracore_es overflow", overflow_shmem_size, 0, (void **) &overflow_slots,
				 overflow_shmem_init);
}

/*
 * This database's slot, taken the first time (NULL: none).  Found once per
 * backend: the slot stays this database's while a backend is connected to
 * it (it is freed when the database is dropped, which no backend of it
 * outlives).  A backend that found every slot taken looks again once one
 * was freed: another backend of its database may take that slot, and the
 * partition maker then mark the partition empty there, which this
 * backend's inserts must clear (es_overflow_filling).  A backend looks
 * before its insert tells the slot, holding the partition's ROW EXCLUSIVE
 * lock, which the maker's SHARE lock waits for: an insert that saw no slot
 * freed commits before the maker can measure the partition.
 */
static OverflowSlot *
overflow_slot(void)
{
	static OverflowSlot *mine = NULL;
	static uint64 freed_seen = PG_UINT64_MAX;	/* freed when it last looked; never yet */
	OverflowSlot *free_slot = NULL;
	int			i;

	if (mine != NULL || overflow_slots == NULL || !OidIsValid(MyDatabaseId) ||
		pg_atomic_read_u64(&overflow_slots->freed) == freed_seen)
		return mine;
	SpinLockAcquire(&overflow_slots->mutex);
	freed_seen = pg_atomic_read_u64(&overflow_slots->freed);
	for (i = 0; i < OVERFLOW_SLOTS && mine == NULL; i++)
	{
		uint32		dbid = pg_atomic_read_u32(&overflow_slots->slot[i].dbid);

		if (dbid == MyDatabaseId)
			mine = &overflow_slots->slot[i];
		else if (dbid == 0 && free_slot == NULL)
			free_slot = &overflow_slots->slot[i];
	}
	if (mine == NULL && free_slot != NULL)
	{
		pg_atomic_write_u32(&free_slot->dbid, MyDatabaseId);
		mine = free_slot;
	}
	SpinLockRelease(&overflow_slots->mutex);
	return mine;
}

/*
 * es_overflow_forget: database dbid was dropped; its slot, if it had one,
 * is free, knowing nothing (a database that takes it starts from "maybe
 * rows", as one that has no slot).
 */
void
es_overflow_forget(Oid dbid)
{
	int			i;

	if (overflow_slots == NULL || !OidIsValid(dbid))
		return;
	SpinLockAcquire(&overflow_slots->mutex);
	for (i = 0; i < OVERFLOW_SLOTS; i++)
		if (pg_atomic_read_u32(&overflow_slots->slot[i].dbid) == dbid)
		{
			overflow_slot_reset(&overflow_slots->slot[i]);
			pg_atomic_fetch_add_u64(&overflow_slots->freed, 1);
		}
	SpinLockRelease(&overflow_slots->mutex);
}

/*
 * es_overflow_altered: after an ALTER TABLE.  One of es_events or of
 * es_events_overflow that enables or disables triggers (a data-only
 * pg_restore --disable-triggers disables them all while it loads), or
 * attaches another table as the DEFAULT partition, may let rows into that
 * partition without its trigger telling the slot: the slot then knows
 * nothing again, and readers look there until the partition maker
 * measures it (which waits for the ALTER's lock, and measures nothing
 * while the trigger does not always fire).  By name: a table of that name
 * in another schema costs the store a measure, no more.
 */
void
es_overflow_altered(AlterTableStmt *stmt)
{
	OverflowSlot *slot;
	ListCell   *lc;

	if (stmt->objtype != OBJECT_TABLE || stmt->relation == NULL ||
		(strcmp(stmt->relation->relname, "es_events") != 0 &&
		 strcmp(stmt->relation->relname, "es_events_overflow") != 0))
		return;
	foreach(lc, stmt->cmds)
	{
		AlterTableCmd *cmd = lfirst_node(AlterTableCmd, lc);

		switch (cmd->subtype)
		{
			case AT_EnableTrig:
			case AT_EnableAlwaysTrig:
			case AT_EnableReplicaTrig:
			case AT_DisableTrig:
			case AT_EnableTrigAll:
			case AT_DisableTrigAll:
			case AT_EnableTrigUser:
			case AT_DisableTrigUser:
				break;
			case AT_AttachPartition:
				if (((PartitionCmd *) cmd->def)->bound->is_default)
					break;
				continue;
			default:
				continue;
		}
		if ((slot = overflow_slot()) != NULL)
			overflow_slot_unknown(slot);
		return;
	}
}

/*
 * es_overflow_may_hold: es_events_overflow may hold a row at position from
 * or above.  Read after the snapshot (see above).
 */
bool
es_overflow_may_hold(int64 from)
{
	OverflowSlot *slot = overflow_slot();

	if (slot == NULL)
		return true;
	pg_read_barrier();
	return pg_atomic_read_u32(&slot->empty) == 0 &&
		(int64) pg_atomic_read_u64(&slot->top) >= from;
}

/* es_overflow_known_empty: es_events_overflow holds no row (see above). */
bool
es_overflow_known_empty(void)
{
	return !es_overflow_may_hold(PG_INT64_MIN);
}

/* es_overflow_filling: a row at position is about to go into es_events_overflow. */
void
es_overflow_filling(int64 position)
{
	OverflowSlot *slot = overflow_slot();
	uint64		top;

	if (slot == NULL)
		return;
	top = pg_atomic_read_u64(&slot->top);
	while ((int64) top < position &&
		   !pg_atomic_compare_exchange_u64(&slot->top, &top, (uint64) position))
		;
	pg_atomic_write_u32(&slot->empty, 0);
	pg_memory_barrier();
}

/*
 * Whether every row SQL puts into es_events_overflow (rel) tells the slot:
 * its trigger es_events_overflow_filling (made by the update script) fires
 * always.  Disabled, or enabled for the origin only (as pg_restore's
 * ENABLE TRIGGER ALL leaves it; a logical replication worker, a replica,
 * does not fire it), rows could go in untold after a measure.
 */
static bool
overflow_filling_fires(Relation rel)
{
	TriggerDesc *triggers = rel->trigdesc;
	int			i;

	for (i = 0; triggers != NULL && i < triggers->numtriggers; i++)
		if (strcmp(triggers->triggers[i].tgname, "es_events_overflow_filling") == 0)
			return triggers->triggers[i].tgenabled == TRIGGER_FIRES_ALWAYS;
	return false;
}

/*
 * es_overflow_measure: what es_events_overflow (part), which the caller
 * holds SHARE (no insert of another transaction under way, none can
 * start, its triggers cannot be altered), holds: nothing, when it has no
 * block; else, when not known (after a restart), rows up to the highest
 * position of any row version its position index points to (the
 * caller's own rows too, which a snapshot of its current command would
 * not see; a higher one than the events' is harmless).  Nothing is
 * measured while its filling trigger does not always fire.
 */
void
es_overflow_measure(const EsPartition *part)
{
	OverflowSlot *slot = overflow_slot();
	Relation	rel;

	if (slot == NULL)
		return;
	rel = table_open(part->relid, NoLock);
	if (!overflow_filling_fires(rel))
	{
		table_close(rel, NoLock);
		return;
	}
	if (RelationGetNumberOfBlocks(rel) == 0)
	{
		pg_atomic_write_u64(&slot->top, (uint64) PG_INT64_MIN);
		pg_atomic_write_u32(&slot->empty, 1);
	}
	else if ((int64) pg_atomic_read_u64(&slot->top) == OVERFLOW_TOP_UNKNOWN)
	{
		ScanKeyData key;
		HeapTuple	row;
		bool		isnull;

		ScanKeyInit(&key, 1, BTGreaterEqualStrategyNumber, F_INT8GE, Int64GetDatum(PG_INT64_MIN));
		row = partition_probe(rel, part->position_idx, SnapshotAny, &key, BackwardScanDirection);
		pg_atomic_write_u64(&slot->top, (uint64) (row == NULL ? PG_INT64_MIN
												  : DatumGetInt64(heap_getattr(row, EV_POSITION + 1,
																			   RelationGetDescr(rel), &isnull))));
	}
	table_close(rel, NoLock);
}

/*
 * The partitions a read must open: all, but the DEFAULT one when it is
 * known empty.
 */
static bool
partition_read(const EsPartition *part, bool overflow_empty)
{
	return !(part->is_default && overflow_empty);
}

/* es_store_on_change callback: es_events or one of its partitions changed. */
static void
partitions_store_changed(const EsStore *store, Oid relid)
{
	int			i;

	if (relid == InvalidOid || relid == store->events_relid || relid == cache_events_relid)
	{
		cache_valid = false;
		invalidations++;
		return;
	}
	for (i = 0; i < cache.n; i++)
		if (cache.parts[i].relid == relid)
		{
			cache_valid = false;
			invalidations++;
		}
}

/* Whether index column n (from 0) of ix is column name of relid. */
static bool
index_column_is(Form_pg_index ix, int n, Oid relid, const char *name)
{
	char	   *attname;

	if (n >= ix->indnkeyatts || ix->indkey.values[n] == 0)
		return false;
	attname = get_attname(relid, ix->indkey.values[n], false);
	return strcmp(attname, name) == 0;
}

/*
 * Whether the index (its pg_index row tup) can serve the store's scans: a
 * btree, in ascending order, with the columns' own collation (the store's
 * text columns are "C"; the scans' keys say so).  One a DBA added by hand
 * (BRIN, DESC, another collation) on the same columns would fail the scans,
 * or return rows out of their order.
 */
static bool
index_serves_scans(Oid indexoid, HeapTuple tup, Form_pg_index ix, Relation rel)
{
	HeapTuple	classtup = SearchSysCache1(RELOID, ObjectIdGetDatum(indexoid));
	bool		btree;
	bool		isnull;
	int2vector *options;
	oidvector  *collations;
	int			i;

	if (!HeapTupleIsValid(classtup))
		return false;
	btree = ((Form_pg_class) GETSTRUCT(classtup))->relam == BTREE_AM_OID;
	ReleaseSysCache(classtup);
	if (!btree)
		return false;
	options = (int2vector *) DatumGetPointer(SysCacheGetAttr(INDEXRELID, tup, Anum_pg_index_indoption, &isnull));
	if (isnull)
		return false;
	collations = (oidvector *) DatumGetPointer(SysCacheGetAttr(INDEXRELID, tup, Anum_pg_index_indcollation, &isnull));
	if (isnull)
		return false;
	for (i = 0; i < ix->indnkeyatts; i++)
	{
		AttrNumber	att = ix->indkey.values[i];

		if ((options->values[i] & INDOPTION_DESC) != 0 || att <= 0 ||
			collations->values[i] != TupleDescAttr(RelationGetDescr(rel), att - 1)->attcollation)
			return false;
	}
	return true;
}

/*
 * Check that part's table (open) has es_events' columns at the same numbers
 * (the C paths route and read rows in es_events' descriptor), and find the
 * indexes they scan among its own.
 */
static void
partition_check(EsPartition *part, Relation rel, Relation events)
{
	TupleDesc	desc = RelationGetDescr(rel);
	TupleDesc	events_desc = RelationGetDescr(events);
	List	   *indexes;
	ListCell   *lc;
	int			i;

	for (i = 0; i < events_desc->natts; i++)
		if (desc->natts != events_desc->natts ||
			TupleDescAttr(desc, i)->attisdropped ||
			TupleDescAttr(desc, i)->atttypid != TupleDescAttr(events_desc, i)->atttypid)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("partition \"%s\" of es_events does not have its columns in the same places",
							RelationGetRelationName(rel)),
					 errhint("Attach only tables made by the worker, or as CREATE TABLE ... (LIKE es_events).")));
	indexes = RelationGetIndexList(rel);

	foreach(lc, indexes)
	{
		Oid			indexoid = lfirst_oid(lc);
		HeapTuple	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(indexoid));
		Form_pg_index ix;

		if (!HeapTupleIsValid(tup))
			elog(ERROR, "cache lookup failed for index %u", indexoid);
		ix = (Form_pg_index) GETSTRUCT(tup);
		/* Partial indexes (correlation ids) serve no scan here. */
		if (ix->indisvalid && heap_attisnull(tup, Anum_pg_index_indpred, NULL) &&
			index_serves_scans(indexoid, tup, ix, rel))
		{
			if (ix->indnkeyatts == 2 && ix->indisunique &&
				index_column_is(ix, 0, part->relid, "aggregate_id") &&
				index_column_is(ix, 1, part->relid, "version"))
				part->version_idx = indexoid;
			else if (ix->indnkeyatts == 2 &&
					 index_column_is(ix, 0, part->relid, "tx_id") &&
					 index_column_is(ix, 1, part->relid, "position"))
				part->commit_idx = indexoid;
			else if (ix->indnkeyatts == 1 && ix->indisunique &&
					 index_column_is(ix, 0, part->relid, "position"))
				part->position_idx = indexoid;
			else if (ix->indnkeyatts == 1 && ix->indisunique &&
					 index_column_is(ix, 0, part->relid, "event_id"))
				part->event_id_idx = indexoid;
		}
		ReleaseSysCache(tup);
	}
	list_free(indexes);
	if (!OidIsValid(part->version_idx) || !OidIsValid(part->commit_idx) ||
		!OidIsValid(part->position_idx))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("partition \"%s\" of es_events lacks an index the event store reads",
						get_rel_name(part->relid)),
				 errdetail("Each partition needs a unique index on (aggregate_id, version), one on (tx_id, position) and a unique one on (position)."),
				 errhint("Create the missing index on the partition.")));
}

/* A bound of a range partition: MINVALUE, MAXVALUE or a position. */
static int64
partition_bound(List *datums)
{
	PartitionRangeDatum *d = linitial_node(PartitionRangeDatum, datums);

	if (d->kind == PARTITION_RANGE_DATUM_MINVALUE)
		return PG_INT64_MIN;
	if (d->kind == PARTITION_RANGE_DATUM_MAXVALUE)
		return PG_INT64_MAX;
	return DatumGetInt64(castNode(Const, d->value)->constvalue);
}

static int
partition_order(const void *a, const void *b)
{
	const EsPartition *x = (const EsPartition *) a;
	const EsPartition *y = (const EsPartition *) b;

	if (x->is_default != y->is_default)
		return x->is_default ? 1 : -1;
	return (x->from_position > y->from_position) - (x->from_position < y->from_position);
}

/* Read one partition's bound from pg_class.relpartbound. */
static void
partition_read_bound(EsPartition *part)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(part->relid));
	Datum		d;
	bool		isnull;
	PartitionBoundSpec *spec;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", part->relid);
	d = SysCacheGetAttr(RELOID, tup, Anum_pg_class_relpartbound, &isnull);
	if (isnull)
		elog(ERROR, "partition %u of es_events has no bound", part->relid);
	spec = castNode(PartitionBoundSpec, stringToNode(TextDatumGetCString(d)));
	part->is_default = spec->is_default;
	if (!spec->is_default)
	{
		part->from_position = partition_bound(spec->lowerdatums);
		part->to_position = partition_bound(spec->upperdatums);
	}
	ReleaseSysCache(tup);
}

/* Read the partitions of es_events (open) into the cache. */
static void
partitions_build(Relation events)
{
	MemoryContext old;
	int			i;

	if (cache_cxt == NULL)
		cache_cxt = AllocSetContextCreate(TopMemoryContext, "ultracore_es partitions",
										  ALLOCSET_SMALL_SIZES);
	MemoryContextReset(cache_cxt);
	cache.n = 0;
	cache.parts = NULL;
	old = MemoryContextSwitchTo(cache_cxt);
	if (events->rd_rel->relkind == RELKIND_PARTITIONED_TABLE)
	{
		PartitionDesc desc = RelationGetPartitionDesc(events, true);

		cache.parts = palloc0(sizeof(EsPartition) * Max(desc->nparts, 1));
		for (i = 0; i < desc->nparts; i++)
		{
			EsPartition *part = &cache.parts[cache.n++];

			if (!desc->is_leaf[i])
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("partition \"%s\" of es_events is partitioned itself",
								get_rel_name(desc->oids[i])),
						 errhint("Attach plain tables only: the worker makes es_events' partitions.")));
			part->relid = desc->oids[i];
			partition_read_bound(part);
		}
		qsort(cache.parts, cache.n, sizeof(EsPartition), partition_order);
	}
	else
	{
		cache.parts = palloc0(sizeof(EsPartition));
		cache.parts[0].relid = RelationGetRelid(events);
		cache.parts[0].from_position = PG_INT64_MIN;
		cache.parts[0].to_position = PG_INT64_MAX;
		cache.n = 1;
	}
	MemoryContextSwitchTo(old);
	for (i = 0; i < cache.n; i++)
	{
		Relation	rel = (cache.parts[i].relid == RelationGetRelid(events)) ? events
			: table_open(cache.parts[i].relid, AccessShareLock);

		partition_check(&cache.parts[i], rel, events);
		if (rel != events)
			table_close(rel, NoLock);
	}
}


/*
 * es_partitions: the partitions of es_events, open (events) with the lock
 * the caller needs.  Their tables are locked AccessShareLock here the first
 * time, to read their indexes.
 */
const EsPartitions *
es_partitions(EsStore *s, Relation events)
{
	static bool registered = false;

	if (!registered)
	{
		es_store_on_change(partitions_store_changed);
		registered = true;
	}

	/*
	 * A lock on es_events held since earlier in the transaction brings no
	 * invalidation: a partition attached since would stay unknown, and the
	 * events a newer snapshot sees in it unread (a consumer's checkpoint
	 * would pass them).  Its ATTACH sent its invalidation before any event
	 * went into it, so before the commit of any event the caller's
	 * snapshot (taken before this call) sees there: reading the queue now
	 * is enough.
	 */
	AcceptInvalidationMessages();
	while (!cache_valid || cache_events_relid != RelationGetRelid(events))
	{
		uint64		seen = invalidations;

		partitions_build(events);
		cache_events_relid = RelationGetRelid(events);
		cache_valid = (invalidations == seen);
	}
	return &cache;
}

/* The DEFAULT partition (es_events_overflow), last in p; NULL when there is none. */
static const EsPartition *
default_partition(const EsPartitions *p)
{
	return (p->n > 0 && p->parts[p->n - 1].is_default) ? &p->parts[p->n - 1] : NULL;
}

/*
 * es_partition_of: the partition that holds position, by the ranges, else
 * the DEFAULT one; NULL when none would.
 */
const EsPartition *
es_partition_of(const EsPartitions *p, int64 position)
{
	const EsPartition *overflow = default_partition(p);
	int			lo = 0;
	int			hi = overflow != NULL ? p->n - 2 : p->n - 1;

	while (lo <= hi)
	{
		int			mid = (lo + hi) / 2;
		const EsPartition *part = &p->parts[mid];

		if (position < part->from_position)
			hi = mid - 1;
		else if (position >= part->to_position)
			lo = mid + 1;
		else
			return part;
	}
	return overflow;
}

/*
 * A scan of one index of every partition, its rows merged into the index's
 * order: a heap of the partitions whose scan has a current row, by that
 * row's key.  One partition: its scan alone.
 */
struct EsMergedScan
{
	int			n;
	EsPartitionIndex which;
	ScanDirection direction;
	Relation   *rels;
	Relation   *indexes;
	IndexScanDesc *scans;
	TupleTableSlot **slots;
	binaryheap *heap;
	Relation	events;			/* es_events, open by the caller */
	int			current;		/* partition whose row was returned last; -1: none yet */
	bool		ended;
};

/* The order of two partitions' current rows, largest first for binaryheap. */
static int
merged_compare(Datum a, Datum b, void *arg)
{
	EsMergedScan *m = (EsMergedScan *) arg;
	TupleTableSlot *x = m->slots[DatumGetInt32(a)];
	TupleTableSlot *y = m->slots[DatumGetInt32(b)];
	bool		isnull;
	int			c;

	if (m->which == ES_INDEX_COMMIT)
	{
		FullTransactionId tx = DatumGetFullTransactionId(slot_getattr(x, EV_TX_ID + 1, &isnull));
		FullTransactionId ty = DatumGetFullTransactionId(slot_getattr(y, EV_TX_ID + 1, &isnull));

		c = FullTransactionIdPrecedes(tx, ty) ? -1 : FullTransactionIdPrecedes(ty, tx) ? 1 : 0;
	}
	else
		c = 0;
	if (c == 0)
	{
		/* Within an aggregate, versions follow positions; within a key, positions. */
		int			att = (m->which == ES_INDEX_VERSION) ? EV_VERSION + 1 : EV_POSITION + 1;
		int64		vx = DatumGetInt64(slot_getattr(x, att, &isnull));
		int64		vy = DatumGetInt64(slot_getattr(y, att, &isnull));

		c = (vx > vy) - (vx < vy);
	}
	/* The heap's first is its largest: forward scans want the smallest row first. */
	return ScanDirectionIsForward(m->direction) ? -c : c;
}

/*
 * es_merged_scan_begin: scan index which of every partition of es_events
 * (events, open) with snapshot and keys (on the index's columns), rows in
 * its order, forward or backward.  The version index's keys must fix the
 * aggregate: its rows are merged by version.
 */
EsMergedScan *
es_merged_scan_begin(EsStore *s, Relation events, EsPartitionIndex which, Snapshot snapshot,
					 ScanKey keys, int nkeys, ScanDirection direction)
{
	const EsPartitions *p = es_partitions(s, events);
	EsMergedScan *m = palloc0(sizeof(EsMergedScan));
	bool		overflow_empty = es_overflow_known_empty();
	int			i;

	m->n = 0;
	m->which = which;
	m->direction = direction;
	m->events = events;
	m->current = -1;
	m->rels = palloc(sizeof(Relation) * Max(p->n, 1));
	m->indexes = palloc(sizeof(Relation) * Max(p->n, 1));
	m->scans = palloc(sizeof(IndexScanDesc) * Max(p->n, 1));
	m->slots = palloc(sizeof(TupleTableSlot *) * Max(p->n, 1));
	for (i = 0; i < p->n; i++)
	{
		const EsPartition *part = &p->parts[i];
		Oid			indexoid = (which == ES_INDEX_VERSION) ? part->version_idx : part->commit_idx;
		int			j = m->n;

		if (!partition_read(part, overflow_empty))
			continue;
		m->rels[j] = (part->relid == RelationGetRelid(events)) ? events
			: table_open(part->relid, AccessShareLock);
		m->indexes[j] = index_open(indexoid, AccessShareLock);
		m->slots[j] = table_slot_create(m->rels[j], NULL);
		m->scans[j] = index_beginscan(m->rels[j], m->indexes[j], snapshot, nkeys, 0);
		index_rescan(m->scans[j], keys, nkeys, NULL, 0);
		m->n++;
	}
	if (m->n > 1)
		m->heap = binaryheap_allocate(m->n, merged_compare, m);
	return m;
}

/* es_merged_scan_next: the next row, in a slot of its partition; NULL at the end. */
TupleTableSlot *
es_merged_scan_next(EsMergedScan *m)
{
	int			i;

	if (m->ended)
		return NULL;
	if (m->heap == NULL)
	{
		if (m->n == 0 || !index_getnext_slot(m->scans[0], m->direction, m->slots[0]))
			return NULL;
		return m->slots[0];
	}
	if (m->current < 0)
	{
		for (i = 0; i < m->n; i++)
			if (index_getnext_slot(m->scans[i], m->direction, m->slots[i]))
				binaryheap_add_unordered(m->heap, Int32GetDatum(i));
		binaryheap_build(m->heap);
	}
	else if (index_getnext_slot(m->scans[m->current], m->direction, m->slots[m->current]))
		binaryheap_replace_first(m->heap, Int32GetDatum(m->current));
	else
		(void) binaryheap_remove_first(m->heap);
	if (binaryheap_empty(m->heap))
	{
		m->ended = true;
		return NULL;
	}
	m->current = DatumGetInt32(binaryheap_first(m->heap));
	return m->slots[m->current];
}

void
es_merged_scan_end(EsMergedScan *m)
{
	int			i;

	for (i = 0; i < m->n; i++)
	{
		index_endscan(m->scans[i]);
		ExecDropSingleTupleTableSlot(m->slots[i]);
		index_close(m->indexes[i], NoLock);
		if (m->rels[i] != m->events)
			table_close(m->rels[i], NoLock);
	}
	if (m->heap)
		binaryheap_free(m->heap);
	pfree(m->rels);
	pfree(m->indexes);
	pfree(m->scans);
	pfree(m->slots);
	pfree(m);
}

/*
 * A copy of the first row (in direction) found by a scan of index indexoid
 * of rel with key, or NULL.
 */
static HeapTuple
partition_probe(Relation rel, Oid indexoid, Snapshot snapshot, ScanKey key, ScanDirection direction)
{
	Relation	idx = index_open(indexoid, AccessShareLock);
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	IndexScanDesc scan = index_beginscan(rel, idx, snapshot, 1, 0);
	HeapTuple	row = NULL;

	index_rescan(scan, key, 1, NULL, 0);
	if (index_getnext_slot(scan, direction, slot))
		row = ExecCopySlotHeapTuple(slot);
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(idx, NoLock);
	return row;
}

/*
 * Lookups by position: a scan of the unique position index of each
 * partition, begun the first time a position falls there and rescanned for
 * the next, so that a reader of the commit log pays one probe per event.
 */
struct EsPositionLookup
{
	EsPartitions p;				/* a copy: fn of a reader may rebuild the cache */
	bool		overflow_empty;
	Relation	events;
	Snapshot	snapshot;
	Relation   *rels;			/* NULL: not begun */
	Relation   *indexes;
	IndexScanDesc *scans;
	TupleTableSlot **slots;
};

EsPositionLookup *
es_position_lookup_begin(EsStore *s, Relation events, Snapshot snapshot)
{
	EsPositionLookup *l = palloc0(sizeof(EsPositionLookup));
	const EsPartitions *p = es_partitions(s, events);
	int			n = Max(p->n, 1);

	l->p.n = p->n;
	l->p.parts = palloc(sizeof(EsPartition) * n);
	memcpy(l->p.parts, p->parts, sizeof(EsPartition) * p->n);
	l->overflow_empty = es_overflow_known_empty();
	l->events = events;
	l->snapshot = snapshot;
	l->rels = palloc0(sizeof(Relation) * n);
	l->indexes = palloc0(sizeof(Relation) * n);
	l->scans = palloc0(sizeof(IndexScanDesc) * n);
	l->slots = palloc0(sizeof(TupleTableSlot *) * n);
	return l;
}

/* es_position_lookup: the event at position, in a slot of its partition; NULL: none. */
TupleTableSlot *
es_position_lookup(EsPositionLookup *l, int64 position)
{
	const EsPartition *part = es_partition_of(&l->p, position);
	ScanKeyData key;
	int			i;

	if (part == NULL || !partition_read(part, l->overflow_empty))
		return NULL;
	i = part - l->p.parts;
	if (l->rels[i] == NULL)
	{
		l->rels[i] = (part->relid == RelationGetRelid(l->events)) ? l->events
			: table_open(part->relid, AccessShareLock);
		l->indexes[i] = index_open(part->position_idx, AccessShareLock);
		l->slots[i] = table_slot_create(l->rels[i], NULL);
		l->scans[i] = index_beginscan(l->rels[i], l->indexes[i], l->snapshot, 1, 0);
	}
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(position));
	index_rescan(l->scans[i], &key, 1, NULL, 0);
	if (!index_getnext_slot(l->scans[i], ForwardScanDirection, l->slots[i]))
		return NULL;
	return l->slots[i];
}

void
es_position_lookup_end(EsPositionLookup *l)
{
	int			i;

	for (i = 0; i < l->p.n; i++)
	{
		if (l->rels[i] == NULL)
			continue;
		index_endscan(l->scans[i]);
		ExecDropSingleTupleTableSlot(l->slots[i]);
		index_close(l->indexes[i], NoLock);
		if (l->rels[i] != l->events)
			table_close(l->rels[i], NoLock);
	}
	pfree(l->p.parts);
	pfree(l->rels);
	pfree(l->indexes);
	pfree(l->scans);
	pfree(l->slots);
	pfree(l);
}

/*
 * es_event_by_position: a copy of the event at position, read with
 * snapshot in the partition that holds it; NULL when there is none.
 */
HeapTuple
es_event_by_position(EsStore *s, Relation events, int64 position, Snapshot snapshot)
{
	EsPositionLookup *l = es_position_lookup_begin(s, events, snapshot);
	TupleTableSlot *slot = es_position_lookup(l, position);
	HeapTuple	row = slot ? ExecCopySlotHeapTuple(slot) : NULL;

	es_position_lookup_end(l);
	return row;
}

/*
 * es_event_by_id: a copy of the event event_id, read with snapshot; NULL
 * when there is none.  Its position from the key table es_event_ids, or,
 * for the events of a 1.0 store, the 1.0 table's own primary key: two
 * probes whatever the number of partitions.
 */
HeapTuple
es_event_by_id(EsStore *s, Relation events, const char *event_id, Snapshot snapshot)
{
	const EsPartitions *p = es_partitions(s, events);
	ScanKeyData key;
	HeapTuple	row = NULL;
	int			i;

	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_TEXTEQ, CStringGetTextDatum(event_id));
	key.sk_collation = C_COLLATION_OID;
	if (OidIsValid(s->event_ids_relid))
	{
		Relation	ids = table_open(s->event_ids_relid, AccessShareLock);
		HeapTuple	k = partition_probe(ids, s->event_ids_idx, snapshot, &key, ForwardScanDirection);

		if (k != NULL)
		{
			bool		isnull;
			int64		position = DatumGetInt64(heap_getattr(k, 2, RelationGetDescr(ids), &isnull));

			row = es_event_by_position(s, events, position, snapshot);
			if (row == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("event \"%s\" was dropped from the database", event_id),
						 errdetail("Its position, %lld, lies in a partition dropped after its export (es_dropped_history); its id stays taken.",
								   (long long) position)));
		}
		table_close(ids, NoLock);
		if (row != NULL)
			return row;
	}
	for (i = 0; i < p->n && row == NULL; i++)
	{
		const EsPartition *part = &p->parts[i];
		Relation	rel;

		if (!OidIsValid(part->event_id_idx))
			continue;
		rel = (part->relid == RelationGetRelid(events)) ? events : table_open(part->relid, AccessShareLock);
		row = partition_probe(rel, part->event_id_idx, snapshot, &key, ForwardScanDirection);
		if (rel != events)
			table_close(rel, NoLock);
	}
	return row;
}

/* The aggregate's (key's) last event in part, by its version index; NULL: none. */
static HeapTuple
partition_last(EsStore *s, Relation events, const EsPartition *part, ScanKey key, Snapshot snapshot)
{
	Relation	rel = (part->relid == RelationGetRelid(events)) ? events
		: table_open(part->relid, AccessShareLock);
	HeapTuple	row = partition_probe(rel, part->version_idx, snapshot, key, BackwardScanDirection);

	if (rel != events)
		table_close(rel, NoLock);
	return row;
}

/*
 * The aggregate's (key's) last event when part, a range partition, holds
 * any of its events: the last of them there, or the later one that
 * es_events_overflow (overflow, NULL: none) holds above it (versions follow
 * positions); NULL when part holds none.
 */
static HeapTuple
last_from_range(EsStore *s, Relation events, const EsPartition *part, const EsPartition *overflow,
				ScanKey key, Snapshot snapshot)
{
	TupleDesc	desc = RelationGetDescr(events);
	HeapTuple	row = partition_last(s, events, part, key, snapshot);
	HeapTuple	later = NULL;
	bool		isnull;

	if (row != NULL && overflow != NULL &&
		es_overflow_may_hold(DatumGetInt64(heap_getattr(row, EV_POSITION + 1, desc, &isnull)) + 1))
		later = partition_last(s, events, overflow, key, snapshot);
	return (later != NULL &&
			DatumGetInt64(heap_getattr(later, EV_VERSION + 1, desc, &isnull)) >
			DatumGetInt64(heap_getattr(row, EV_VERSION + 1, desc, &isnull))) ? later : row;
}

/*
 * es_aggregate_id_key: the key of aggregate_id on the first column of an
 * index (a partition's (aggregate_id, version), es_aggregates' primary key).
 */
void
es_aggregate_id_key(ScanKey key, const char *aggregate_id)
{
	ScanKeyInit(key, 1, BTEqualStrategyNumber, F_TEXTEQ, CStringGetTextDatum(aggregate_id));
	key->sk_collation = C_COLLATION_OID;
}

/*
 * es_last_event_recent: a copy of the last event of aggregate_id when the
 * range partition of the last position taken holds any of its events;
 * NULL when it holds none, or when no range holds that position (the
 * caller then searches: es_last_event, from *none_from down).
 *
 * Read under the aggregate's lock, the sequence bounds the positions of all
 * its events (each taken by a writer that held the lock, before it let go);
 * no range above that partition holds one, so the last of them there is
 * the aggregate's last, but for a later one in the DEFAULT partition.  An
 * aggregate written since the current range began then costs one probe,
 * and not the read of its es_aggregates row that the hint needs.  On a
 * miss, *none_from is where that range begins: no range from there up
 * holds any of its events (PG_INT64_MAX when nothing was probed).
 */
HeapTuple
es_last_event_recent(EsStore *s, Relation events, const char *aggregate_id, Snapshot snapshot,
					 int64 *none_from)
{
	const EsPartitions *p = es_partitions(s, events);
	int64		bound = es_position_bound(s);
	const EsPartition *part = bound > 0 ? es_partition_of(p, bound) : NULL;
	ScanKeyData key;

	*none_from = PG_INT64_MAX;
	if (part == NULL || part->is_default)
		return NULL;
	es_aggregate_id_key(&key, aggregate_id);
	*none_from = part->from_position;
	return last_from_range(s, events, part, default_partition(p), &key, snapshot);
}

/*
 * es_last_event: a copy of the last event of aggregate_id (NULL: it has
 * none), read with snapshot; no range from none_from up holds any of its
 * events (es_last_event_recent probed the highest one that could).
 *
 * hint, when not 0, is a position in the partition that holds it
 * (es_aggregates.last_position, which the append keeps exact once set):
 * that partition is probed, and the DEFAULT one when it may hold a later
 * event, one above the event found (versions follow positions).  Else,
 * or when the hint finds nothing (its partition dropped), the search: the
 * newest range partition that holds any of its events holds its last one,
 * and the ranges below none_from are probed from the newest down to the
 * first that does; the DEFAULT partition is probed too (its rows lie
 * between ranges), and the later of the two is the last.  *searched: how
 * many range partitions the search probed.
 */
HeapTuple
es_last_event(EsStore *s, Relation events, const char *aggregate_id, int64 hint, int64 none_from,
			  Snapshot snapshot, int *searched)
{
	const EsPartitions *p = es_partitions(s, events);
	TupleDesc	desc = RelationGetDescr(events);
	const EsPartition *overflow = default_partition(p);
	int			nranges = overflow != NULL ? p->n - 1 : p->n;
	HeapTuple	last = NULL;
	ScanKeyData key;
	bool		isnull;
	int			i;

	*searched = 0;
	es_aggregate_id_key(&key, aggregate_id);
	if (hint != 0)
	{
		const EsPartition *part = es_partition_of(p, hint);
		HeapTuple	row = (part != NULL && !part->is_default && part->from_position < none_from)
			? last_from_range(s, events, part, overflow, &key, snapshot) : NULL;

		if (row != NULL)
			return row;
	}
	if (overflow != NULL && !es_overflow_known_empty())
		last = partition_last(s, events, overflow, &key, snapshot);
	for (i = nranges - 1; i >= 0; i--)
	{
		HeapTuple	row;

		if (p->parts[i].from_position >= none_from)
			continue;
		/* A range wholly below the event found cannot hold a later one. */
		if (last != NULL &&
			p->parts[i].to_position <= DatumGetInt64(heap_getattr(last, EV_POSITION + 1, desc, &isnull)))
			break;
		(*searched)++;
		row = partition_last(s, events, &p->parts[i], &key, snapshot);
		if (row != NULL)
			return row;
	}
	return last;
}

/*
 * es_partitions_keep_ids: whether a partition keeps event ids of its own
 * (the 1.0 table, whose ids es_event_ids does not hold), which only a probe
 * of its index finds (es_event_by_id): es_event_ids' key alone does not
 * refuse an id taken there.
 */
bool
es_partitions_keep_ids(EsStore *s)
{
	Relation	events = table_open(s->events_relid, AccessShareLock);
	const EsPartitions *p = es_partitions(s, events);
	bool		keep = false;
	int			i;

	for (i = 0; i < p->n && !keep; i++)
		keep = OidIsValid(p->parts[i].event_id_idx);
	table_close(events, NoLock);
	return keep;
}

/*
 * es_partitions_apart: whether positions a and b lie in different
 * partitions (a range and the DEFAULT one, or two ranges).
 */
bool
es_partitions_apart(EsStore *s, Relation events, int64 a, int64 b)
{
	const EsPartitions *p = es_partitions(s, events);

	return es_partition_of(p, a) != es_partition_of(p, b);
}
