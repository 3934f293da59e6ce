/*-------------------------------------------------------------------------
 *
 * horizon.c
 *	  Commit order: the key an appending transaction gives its events, and
 *	  the commit horizon, below which every event is committed, so that a
 *	  reader in (key, position) order never skips one that commits late
 *	  (DESIGN.md, decision 1).
 *
 * An event's key (es_events.tx_id) is its transaction's key, raised to the
 * key of its aggregate's previous event (append.c).  A transaction's key is
 * taken when it first appends: the next transaction id then, registered in
 * shared memory until the transaction ends.  Then a transaction id is
 * assigned at or above the key (the transaction's own, or, when it had one
 * already, a subtransaction's), so the next transaction id passes the key
 * at once.  The horizon is the smallest key registered in the database, or
 * the next transaction id when none is: only transactions that have
 * appended to this store hold it back, never a long transaction that did
 * not (a report, a migration, a slow handler's batch, a session in another
 * database).
 *
 * Why it is safe.  A reader computes the horizon H, then takes its snapshot
 * (es_commit_horizon_push), and reads the events below H.  The writer of an
 * event with a key below H was not registered when H was computed (else H
 * would be at most its key) and did not register later (a later key is at
 * least the next transaction id at H's time, so at least H): it had ended,
 * and ended transactions leave the registry only after their commit is
 * visible (the xact callback runs after ProcArrayEndTransaction), so the
 * snapshot taken after H sees them.  A registration is announced before its
 * key is read (a "pending" mark): a reader that sees the mark waits for the
 * key, one that does not see it computed H before the key was read, so the
 * key is at least H.  A prepared transaction leaves the registry when it
 * prepares; the horizon is then also kept below the oldest prepared
 * transaction's id (which is below its key), read from pg_prepared_xacts
 * after the registry, when two-phase commit is enabled.
 *
 * Without preloading there is no registry: the horizon is the oldest
 * transaction id still running anywhere (the snapshot's xmin), which any
 * transaction holds back (es_commit_horizon_of, also used where a
 * transaction snapshot is fixed: REPEATABLE READ, SERIALIZABLE).  Keys are
 * above their writers' ids either way, so both horizons are safe.
 *
 * Locking: each backend writes its own slot (an atomic); readers read all
 * slots without a lock.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "core/horizon.h"

#include "access/twophase.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/proc.h"
#include "storage/s_lock.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/xid8.h"

#include "core/shmem.h"
#include "core/store.h"

/* A slot's values besides keys. */
#define KEY_NONE		UINT64CONST(0)
#define KEY_PENDING		PG_UINT64_MAX

typedef struct HorizonSlot
{
	Oid			database;		/* of the backend, set before its key */
	pg_atomic_uint64 key;
} HorizonSlot;

typedef struct HorizonShared
{
	int			nslots;
	HorizonSlot slots[FLEXIBLE_ARRAY_MEMBER];	/* by pgprocno */
} HorizonShared;

static HorizonShared *horizon_shared = NULL;

/* The current transaction's key, once it appended. */
static bool registered = false;
static FullTransactionId my_key;

/* Every PGPROC: backends, auxiliary processes, prepared transactions. */
static int
horizon_slots(void)
{
	return MaxBackends + NUM_AUXILIARY_PROCS + max_prepared_xacts;
}

static Size
horizon_shmem_size(void)
{
	return add_size(offsetof(HorizonShared, slots), mul_size(horizon_slots(), sizeof(HorizonSlot)));
}

static void
horizon_shmem_init(void *segment)
{
	HorizonShared *shared = (HorizonShared *) segment;
	int			i;

	shared->nslots = horizon_slots();
	for (i = 0; i < shared->nslots; i++)
		pg_atomic_init_u64(&shared->slots[i].key, KEY_NONE);
}

/*
 * The transaction ended: its key leaves the registry (after the commit is
 * visible to new snapshots, or the prepared transaction is listed).
 */
static void
horizon_xact_callback(XactEvent event, void *arg)
{
	if (!registered)
		return;
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT || event == XACT_EVENT_PREPARE ||
		event == XACT_EVENT_PARALLEL_ABORT)
	{
		pg_atomic_write_u64(&horizon_shared->slots[MyProc->pgprocno].key, KEY_NONE);
		registered = false;
	}
}

/* es_horizon_init: from _PG_init; the registry only when preloading. */
void
es_horizon_init(void)
{
	es_shmem_add("ultracore_es horizon", horizon_shmem_size, 0, (void **) &horizon_shared,
				 horizon_shmem_init);
	RegisterXactCallback(horizon_xact_callback, NULL);
}

/* A transaction id at or above the key: a subtransaction's, committed at once. */
static void
horizon_pass_key(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;

	BeginInternalSubTransaction(NULL);
	(void) GetCurrentTransactionId();
	ReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
}

/*
 * es_horizon_key: the key of the current transaction's events (before the
 * store's offset), registered on the first call, and passed by a
 * transaction id of the transaction (see the file header); without the
 * registry, the transaction's own id.
 */
FullTransactionId
es_horizon_key(void)
{
	HorizonSlot *slot;
	bool		had_id;

	if (horizon_shared == NULL)
		return GetTopFullTransactionId();
	if (registered)
		return my_key;
	had_id = FullTransactionIdIsValid(GetTopFullTransactionIdIfAny());
	slot = &horizon_shared->slots[MyProc->pgprocno];
	slot->database = MyDatabaseId;
	pg_write_barrier();
	pg_atomic_write_u64(&slot->key, KEY_PENDING);
	pg_memory_barrier();
	my_key = ReadNextFullTransactionId();
	pg_atomic_write_u64(&slot->key, U64FromFullTransactionId(my_key));
	registered = true;
	if (had_id)
		horizon_pass_key();
	else
		(void) GetTopFullTransactionId();
	return my_key;
}

/*
 * Widen a 32-bit xid seen in a current snapshot to its 64-bit form, as
 * xid8funcs.c does: it is at most 2^31 behind the next transaction id.
 */
static FullTransactionId
widen_xid(TransactionId xid)
{
	FullTransactionId next = ReadNextFullTransactionId();
	uint32		epoch = EpochFromFullTransactionId(next);

	if (!TransactionIdIsNormal(xid))
		return FullTransactionIdFromEpochAndXid(0, xid);
	if (xid > XidFromFullTransactionId(next))
		epoch--;
	return FullTransactionIdFromEpochAndXid(epoch, xid);
}

static EsPlan prepared_plan = {
	"SELECT transaction FROM pg_catalog.pg_prepared_xacts",
	0, {InvalidOid}
};

/*
 * A raw horizon in the store's key space: with its offset, and kept at most
 * one above the highest key stored, so that a horizon handed out before a
 * restore into another cluster is never above the keys appended after it
 * (store.c).  Needs SPI.
 */
static FullTransactionId
horizon_in_store(FullTransactionId raw)
{
	uint64		offset = es_xid_offset(false);
	uint64		horizon = U64FromFullTransactionId(raw) + offset;
	uint64		ceiling = offset + 1;
	FullTransactionId max;

	if (es_max_key(true, &max))
		ceiling = Max(ceiling, U64FromFullTransactionId(max) + 1);
	return FullTransactionIdFromU64(Min(horizon, ceiling));
}

/*
 * es_commit_horizon_of: the commit horizon as snapshot sees it: its xmin,
 * the oldest transaction then running.  Every event with a key below it is
 * committed and visible in the snapshot, as its writer's id is below it
 * too.  Any transaction with an id holds it back.  Needs SPI.
 */
FullTransactionId
es_commit_horizon_of(Snapshot snapshot)
{
	return horizon_in_store(widen_xid(snapshot->xmin));
}

/*
 * es_commit_horizon_push: the commit horizon now, with a snapshot pushed as
 * the active one (the caller pops it) that sees every event below it.  Only
 * transactions that have appended hold it back (see the file header).
 * Where the transaction's snapshot is fixed (REPEATABLE READ,
 * SERIALIZABLE), or without the registry, the snapshot's horizon.  Needs
 * SPI and an active snapshot.
 */
FullTransactionId
es_commit_horizon_push(void)
{
	FullTransactionId bound;
	uint64		min;
	int			i;

	if (horizon_shared == NULL || IsolationUsesXactSnapshot())
	{
		PushActiveSnapshot(GetTransactionSnapshot());
		return es_commit_horizon_of(GetActiveSnapshot());
	}

	bound = ReadNextFullTransactionId();
	pg_memory_barrier();
	min = U64FromFullTransactionId(bound);
	for (i = 0; i < horizon_shared->nslots; i++)
	{
		HorizonSlot *slot = &horizon_shared->slots[i];
		uint64		key = pg_atomic_read_u64(&slot->key);

		/* A key being taken: it is a few instructions away. */
		while (key == KEY_PENDING)
		{
			SPIN_DELAY();
			key = pg_atomic_read_u64(&slot->key);
		}
		pg_read_barrier();
		/* Keys of other stores (databases) are not this store's concern. */
		if (key != KEY_NONE && key < min && slot->database == MyDatabaseId)
			min = key;
	}
	/* After the registry: a transaction prepares before it leaves it. */
	if (max_prepared_xacts > 0)
	{
		uint64		n;

		if (SPI_execute_plan(es_plan(&prepared_plan), NULL, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read the prepared transactions");
		for (n = 0; n < SPI_processed; n++)
		{
			bool		isnull;
			TransactionId xid = DatumGetTransactionId(SPI_getbinval(SPI_tuptable->vals[n],
																	SPI_tuptable->tupdesc, 1, &isnull));

			min = Min(min, U64FromFullTransactionId(widen_xid(xid)));
		}
		SPI_freetuptable(SPI_tuptable);
	}
	PushActiveSnapshot(GetTransactionSnapshot());
	return horizon_in_store(FullTransactionIdFromU64(min));
}

/*
 * es_commit_horizon_now: the commit horizon now (es_commit_horizon_push,
 * without keeping its snapshot): a checkpoint that is "the present" for a
 * new reader.  Needs SPI and an active snapshot.
 */
FullTransactionId
es_commit_horizon_now(void)
{
	FullTransactionId horizon = es_commit_horizon_push();

	PopActiveSnapshot();
	return horizon;
}
