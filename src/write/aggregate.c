/*-------------------------------------------------------------------------
 *
 * aggregate.c
 *	  The row of es_aggregates that each aggregate owns, and the lock on it
 *	  that serializes the aggregate's writers.
 *
 * An aggregate's row holds what never changes (its id, its type, when it was
 * created); its current version is the last version in the events table.  An
 * append takes the aggregate's lock, then reads the last event through the
 * unique (aggregate_id, version) index, and checks the expected version
 * against it before any position is taken.
 *
 * The lock is a transaction-level lock of the lock manager, in shared
 * memory, keyed by the database and a 64-bit hash of the aggregate's id
 * (pg_locks shows it as an advisory lock with objsubid 17747, which the
 * advisory lock functions never use).  Writers of one aggregate queue on
 * it and on nothing else; writers of different aggregates wait on each
 * other only if their ids' hashes collide, about once in 10^19 pairs, and
 * then only until the first one commits (DESIGN.md, decision 2).  It
 * writes nothing: the row lock it replaces (FOR NO KEY UPDATE) wrote the
 * row's xmax and a WAL record on every append, and an UPDATE of a version
 * column a whole new row version.  The unique (aggregate_id, version)
 * index stays the backstop.
 *
 * The last event is read with SnapshotSelf once the lock is held: every
 * writer of the aggregate takes the lock first, so no other transaction can
 * be adding events to it, and SnapshotSelf sees exactly the committed events
 * plus our own.  It also gives the aggregate's type, so the aggregate's row
 * is read only when it has no event (a new aggregate, or one whose events
 * were deleted by hand).  Under REPEATABLE READ and SERIALIZABLE an event
 * committed after the transaction's snapshot means the aggregate changed
 * under it: the append fails with a serialization error, as an UPDATE
 * would.
 *
 * Direct table access (index probes, the hint's update) rather than SQL:
 * this is the hot half of every append.  New rows are inserted through SPI
 * with ON CONFLICT, which resolves two creators racing: the loser waits for
 * the winner's transaction on the row's unique key.
 *
 * Needs a transaction; runs as the owner of the tables (es_call_begin).
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "write/aggregate.h"

#include "access/genam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "common/hashfn.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"
#include "utils/xid8.h"

#include "core/partitions.h"

/* Columns of es_aggregates read here, in the order of the install scripts. */
#define Anum_agg_aggregate_id		1
#define Anum_agg_aggregate_type		2
#define Anum_agg_last_position		4	/* 1.1 */

/* The aggregates' locks among the advisory locks: "ES"; the advisory functions use 1 and 2. */
#define AGGREGATE_LOCK_SUBID		0x4553

static EsPlan create_plan = {
	"INSERT INTO @extschema@.es_aggregates (aggregate_id, aggregate_type, created_at)"
	" VALUES ($1, $2, $3)"
	" ON CONFLICT (aggregate_id) DO NOTHING",
	3, {TEXTOID, TEXTOID, TIMESTAMPTZOID}
};

/*
 * 1.1: with last_position, the last position taken: the aggregate's events,
 * taken after it, lie in its partition, or in a later one, where the
 * append's search finds them (es_last_event) and es_aggregate_moved then
 * records their partition.
 */
static EsPlan create_positioned_plan = {
	"INSERT INTO @extschema@.es_aggregates (aggregate_id, aggregate_type, created_at, last_position)"
	" SELECT $1, $2, $3, s.last_value FROM @extschema@.es_events_position_seq s"
	" ON CONFLICT (aggregate_id) DO NOTHING",
	3, {TEXTOID, TEXTOID, TIMESTAMPTZOID}
};

/*
 * Look up the row of aggregate_id with snap; false when not found.  The
 * aggregate's type, last_position and the row's tid go into row.
 */
static bool
aggregate_find_row(Relation rel, Relation idx, Snapshot snap, const char *aggregate_id,
				   EsAggregateRow *row)
{
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	ScanKeyData key;
	IndexScanDesc scan;
	bool		found;

	es_aggregate_id_key(&key, aggregate_id);
	scan = index_beginscan(rel, idx, snap, 1, 0);
	index_rescan(scan, &key, 1, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, slot);
	row->last_position = 0;
	ItemPointerSetInvalid(&row->tid);
	if (found)
	{
		row->tid = slot->tts_tid;
		slot_getallattrs(slot);
		text_to_cstring_buffer(DatumGetTextPP(slot->tts_values[Anum_agg_aggregate_type - 1]),
							   row->aggregate_type, sizeof(row->aggregate_type));
		if (slot->tts_tupleDescriptor->natts >= Anum_agg_last_position &&
			!slot->tts_isnull[Anum_agg_last_position - 1])
			row->last_position = DatumGetInt64(slot->tts_values[Anum_agg_last_position - 1]);
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	return found;
}

/*
 * The last event of the aggregate (its type, current version, commit-order
 * key and hash), read with SnapshotSelf under the aggregate's lock; false
 * when it has none (version 0).  Looked for first in the range of the last
 * position taken (es_last_event_recent), where the events of an aggregate
 * written lately are; else es_aggregates.last_position, read then, says
 * which partition holds it, once the search for it took more than one
 * probe (es_aggregate_moved keeps it): an aggregate idle for a long time
 * costs one probe, not one per newer partition.
 */
static bool
aggregate_last_event(EsStore *s, const char *aggregate_id, EsAggregateRow *row)
{
	Relation	rel = table_open(s->events_relid, RowExclusiveLock);
	HeapTuple	last;
	bool		found;
	int			searched = 0;
	int64		none_from;

	last = es_last_event_recent(s, rel, aggregate_id, SnapshotSelf, &none_from);
	row->last_position = ES_HINT_UNREAD;
	ItemPointerSetInvalid(&row->tid);
	if (last == NULL)
	{
		Relation	aggregates = table_open(s->aggregates_relid, AccessShareLock);
		Relation	idx = index_open(RelationGetPrimaryKeyIndex(aggregates), AccessShareLock);

		/* Where its last event is, when the search once took more than one probe. */
		(void) aggregate_find_row(aggregates, idx, SnapshotSelf, aggregate_id, row);
		index_close(idx, NoLock);
		table_close(aggregates, NoLock);
		last = es_last_event(s, rel, aggregate_id, row->last_position, none_from, SnapshotSelf, &searched);
	}
	found = (last != NULL);
	row->hint_wanted = (searched > 1);

	if (found)
	{
		Datum		values[EV_NATTS];
		bool		isnull[EV_NATTS];

		heap_deform_tuple(last, RelationGetDescr(rel), values, isnull);
		text_to_cstring_buffer(DatumGetTextPP(values[EV_AGGREGATE_TYPE]),
							   row->aggregate_type, sizeof(row->aggregate_type));
		row->version = DatumGetInt64(values[EV_VERSION]);
		row->found_position = DatumGetInt64(values[EV_POSITION]);
		row->last_tx = DatumGetFullTransactionId(values[EV_TX_ID]);
		if (RelationGetDescr(rel)->natts <= EV_HASH ||
			!es_hash_of_datum(values[EV_HASH], isnull[EV_HASH], row->last_hash))
			memcpy(row->last_hash, es_hash_zero, ES_HASH_LEN);

		/* Newer than what this transaction may see: it must not go on. */
		if (IsolationUsesXactSnapshot())
		{
			TransactionId xmin = HeapTupleHeaderGetXmin(last->t_data);

			if (!TransactionIdIsCurrentTransactionId(xmin) &&
				XidInMVCCSnapshot(xmin, GetTransactionSnapshot()))
				ereport(ERROR,
						(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
						 errmsg("could not serialize access due to concurrent update"),
						 errdetail("Aggregate \"%s\" was appended to by a concurrent transaction.",
								   aggregate_id),
						 errhint("Retry the transaction.")));
		}
	}
	else
	{
		row->version = 0;
		row->found_position = 0;
		row->last_tx = InvalidFullTransactionId;
		memcpy(row->last_hash, es_hash_zero, ES_HASH_LEN);
	}
	table_close(rel, NoLock);
	return found;
}

/*
 * es_aggregate_lock: take the lock of aggregate_id for this transaction
 * (waiting for the aggregate's other writers), and read the aggregate's
 * type, current version and last commit-order key into *row.  Returns false
 * when the aggregate does not exist.
 *
 * An aggregate without events is looked up by its row with the calling
 * statement's snapshot, as an UPDATE would; under READ COMMITTED a row
 * created since (by a transaction that has committed) is looked up again
 * with a new snapshot, so that existence and version are judged on the
 * same, latest, state.  One whose row no transaction has committed (nor
 * this one inserted), as read under the lock, is new for every snapshot.
 */
bool
es_aggregate_lock(EsStore *s, const char *aggregate_id, EsAggregateRow *row)
{
	uint64		hash = hash_bytes_extended((const unsigned char *) aggregate_id, strlen(aggregate_id), 0);
	LOCKTAG		tag;
	Relation	rel;
	Relation	idx;
	bool		found;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) (hash >> 32), (uint32) hash, AGGREGATE_LOCK_SUBID);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);

	/*
	 * See the effects of earlier commands of this transaction (an aggregate
	 * created by an earlier append), like any statement does.
	 */
	CommandCounterIncrement();
	if (aggregate_last_event(s, aggregate_id, row))
		return true;
	/* No row committed nor of this transaction (read then): a new aggregate for every snapshot. */
	if (!ItemPointerIsValid(&row->tid))
		return false;

	PushCopiedSnapshot(GetActiveSnapshot());
	UpdateActiveSnapshotCommandId();
	rel = table_open(s->aggregates_relid, AccessShareLock);
	idx = index_open(RelationGetPrimaryKeyIndex(rel), AccessShareLock);
	found = aggregate_find_row(rel, idx, GetActiveSnapshot(), aggregate_id, row);
	if (!found && !IsolationUsesXactSnapshot())
		found = aggregate_find_row(rel, idx, GetLatestSnapshot(), aggregate_id, row);
	index_close(idx, NoLock);
	table_close(rel, NoLock);
	PopActiveSnapshot();
	return found;
}

/*
 * es_aggregate_create: insert the row of a new aggregate.  Returns false when
 * the row exists (created earlier, or by a concurrent transaction that has
 * committed meanwhile).  The new row needs no lock: until this transaction
 * commits, every other writer waits on its unique key.  Needs SPI.
 */
bool
es_aggregate_create(const char *aggregate_id, const char *aggregate_type, TimestampTz now)
{
	Datum		args[3];

	args[0] = CStringGetTextDatum(aggregate_id);
	args[1] = CStringGetTextDatum(aggregate_type);
	args[2] = TimestampTzGetDatum(now);
	if (SPI_execute_plan(es_plan(OidIsValid(es_store_resolved()->event_ids_relid) ? &create_positioned_plan
								 : &create_plan), args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not create aggregate \"%s\"", aggregate_id);
	return SPI_processed == 1;
}

static EsPlan snapshot_version_plan = {
	"SELECT pg_catalog.max(version) FROM @extschema@.es_snapshots WHERE aggregate_id OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}
};

/*
 * es_aggregate_check_history: refuse to append to aggregate_id, which
 * exists and has no event, when it had some: a snapshot of it says so
 * (es_drop_history dropped them all, having checked that one covers
 * them).  The append would take its versions again from 1, beside the
 * dropped ones, and could not chain its hashes to theirs.  An aggregate
 * created without events has no snapshot.  Needs SPI.
 */
void
es_aggregate_check_history(const char *aggregate_id)
{
	Datum		arg = CStringGetTextDatum(aggregate_id);
	bool		isnull;
	int64		version;

	if (SPI_execute_plan(es_plan(&snapshot_version_plan), &arg, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not read the snapshots of aggregate \"%s\"", aggregate_id);
	version = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (!isnull)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the events of aggregate \"%s\" were dropped from the database", aggregate_id),
				 errdetail("Its snapshot is at version %lld and none of its events is left (es_dropped_history): "
						   "an append would take its versions again from 1 and could not chain its hash to the last one's.",
						   (long long) version),
				 errhint("An aggregate that may still change needs its last event kept: drop history (es_drop_history) only below it.")));
}

/*
 * Set es_aggregates.last_position of aggregate_id to position: an update of
 * the row in place of an UPDATE statement (whose executor start-up cost as
 * much as the rest of an append), HOT when its page has room (the column is
 * in no index; the install leaves a tenth of each page free for it), else
 * with new entries in every index.  Under the aggregate's lock no other
 * append updates the row; tid, when valid, is where it was read under it.
 * One changed by hand meanwhile is read again; one deleted by hand has no
 * hint to keep.
 */
static void
aggregate_set_hint(EsStore *s, const char *aggregate_id, const ItemPointerData *tid, int64 position)
{
	Relation	rel = table_open(s->aggregates_relid, RowExclusiveLock);
	TupleDesc	desc = RelationGetDescr(rel);
	TupleTableSlot *old = table_slot_create(rel, NULL);
	TupleTableSlot *new = MakeSingleTupleTableSlot(desc, &TTSOpsVirtual);
	ItemPointerData otid = *tid;
	EsAggregateRow row;
	bool		update_indexes = false;
	int			tries;

	for (tries = 0;; tries++)
	{
		TM_FailureData tmfd;
		LockTupleMode lockmode;
		TM_Result	result;
		bool		isnull;

		if (tries > 10)
			elog(ERROR, "could not update the row of aggregate \"%s\": changed too often", aggregate_id);
		if (!ItemPointerIsValid(&otid))
		{
			Relation	idx = index_open(RelationGetPrimaryKeyIndex(rel), AccessShareLock);
			bool		found = aggregate_find_row(rel, idx, SnapshotSelf, aggregate_id, &row);

			index_close(idx, NoLock);
			if (!found)
				break;
			otid = row.tid;
		}
		/* The version read under the lock, unless another transaction changed it since. */
		if (!table_tuple_fetch_row_version(rel, &otid, SnapshotSelf, old) ||
			strcmp(TextDatumGetCString(slot_getattr(old, Anum_agg_aggregate_id, &isnull)), aggregate_id) != 0)
		{
			ItemPointerSetInvalid(&otid);
			continue;
		}
		slot_getallattrs(old);
		ExecClearTuple(new);
		memcpy(new->tts_values, old->tts_values, sizeof(Datum) * desc->natts);
		memcpy(new->tts_isnull, old->tts_isnull, sizeof(bool) * desc->natts);
		new->tts_values[Anum_agg_last_position - 1] = Int64GetDatum(position);
		new->tts_isnull[Anum_agg_last_position - 1] = false;
		ExecStoreVirtualTuple(new);
		result = table_tuple_update(rel, &otid, new, GetCurrentCommandId(true), InvalidSnapshot,
									InvalidSnapshot, true, &tmfd, &lockmode, &update_indexes);
		if (result == TM_Ok)
			break;
		if (result != TM_Updated && result != TM_Deleted)
			elog(ERROR, "could not update the row of aggregate \"%s\": %d", aggregate_id, (int) result);
		/* Changed or deleted by another transaction, which has committed: again, from its index. */
		ItemPointerSetInvalid(&otid);
	}
	if (update_indexes)
	{
		EState	   *estate = CreateExecutorState();
		ResultRelInfo *rri = makeNode(ResultRelInfo);

		InitResultRelInfo(rri, rel, 1, NULL, 0);
		ExecOpenIndices(rri, false);
		(void) ExecInsertIndexTuples(rri, new, estate, false, false, NULL, NIL);
		ExecCloseIndices(rri);
		FreeExecutorState(estate);
	}
	ExecDropSingleTupleTableSlot(new);
	ExecDropSingleTupleTableSlot(old);
	table_close(rel, NoLock);
}

/* Whether positions a and b lie in different partitions of the store's events. */
static bool
aggregate_apart(EsStore *s, int64 a, int64 b)
{
	/* The lock the append holds already: a lookup in this backend's lock table. */
	Relation	rel = table_open(s->events_relid, RowExclusiveLock);
	bool		apart = es_partitions_apart(s, rel, a, b);

	table_close(rel, NoLock);
	return apart;
}

/*
 * es_aggregate_moved: after events of the aggregate locked into row (by
 * es_aggregate_lock) were stored, the last at last_position: keep
 * es_aggregates.last_position in its partition, once set, and set it when
 * finding the last event took probes of older partitions.  An update of
 * the row about once per aggregate and partition.
 *
 * When the row was not read (the last event was found in the range of the
 * last position taken), its hint is in that partition or in one that holds
 * none of the aggregate's events: both stay true while the new events go
 * to the partition of the one found.
 */
void
es_aggregate_moved(EsStore *s, const char *aggregate_id, const EsAggregateRow *row, int64 last_position)
{
	bool		apart;

	if (row->last_position == 0 && !row->hint_wanted)
		return;
	if (row->last_position == ES_HINT_UNREAD)
		apart = aggregate_apart(s, row->found_position, last_position);
	else
		apart = row->last_position == 0 || aggregate_apart(s, row->last_position, last_position);
	if (!apart || get_attnum(s->aggregates_relid, "last_position") != Anum_agg_last_position)
		return;
	aggregate_set_hint(s, aggregate_id, &row->tid, last_position);
}

/*
 * es_aggregate_created: the events of an aggregate this append created
 * were stored, from position first to last.  Its row's hint is the last
 * position taken before them: in the partition of the first, or in an
 * older one that holds none of its events (the search passes it by).
 * When the events span partitions, the hint's partition holds some of
 * them but not the last, and es_last_event, which takes the last event
 * of the hint's partition for the aggregate's, would read an old version
 * once the store has moved past them: the hint moves to the last.
 */
void
es_aggregate_created(EsStore *s, const char *aggregate_id, int64 first, int64 last)
{
	ItemPointerData unread;

	if (!aggregate_apart(s, first, last) ||
		get_attnum(s->aggregates_relid, "last_position") != Anum_agg_last_position)
		return;
	/* The row was inserted by this very command: updated by the next one. */
	CommandCounterIncrement();
	ItemPointerSetInvalid(&unread);
	aggregate_set_hint(s, aggregate_id, &unread, last);
}
