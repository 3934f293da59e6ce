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
 * a transaction id of its own, assigned when it first appends: its top
 * transaction id, or, when it had one already, a subtransaction's, so that
 * the id is taken now.  The key is registered in shared memory until the
 * transaction ends.  The horizon is the smallest key registered in the
 * database, or the next transaction id when none is: only transactions that
 * have appended to this store hold it back, never a long transaction that
 * did not (a report, a migration, a slow handler's batch, a session in
 * another database).
 *
 * Why it is safe.  A reader computes the horizon H, then takes its snapshot
 * (es_commit_horizon_push), and reads the events below H.  The writer of an
 * event with a key below H was not registered when H was computed (else H
 * would be at most its key) and did not register later (a later key is a
 * transaction id assigned after H was computed, so at least H): it had
 * ended, and ended transactions leave the registry only after their commit
 * is visible (the xact callback runs after ProcArrayEndTransaction), so the
 * snapshot taken after H sees them.  A registration is announced before its
 * id is assigned (a "pending" mark): a reader that sees the mark waits for
 * the key, one that does not see it read the next transaction id before
 * the id was assigned, so the key is at least H.  A prepared transaction
 * leaves the registry when it prepares; the horizon is then also kept below
 * the id of the oldest transaction prepared in the database (its top id, at
 * most its key), read from pg_prepared_xacts after the registry, when
 * two-phase commit is enabled.
 *
 * The other horizon is a snapshot's xmin, the oldest transaction id running
 * anywhere when it was taken (es_commit_horizon_of): any transaction holds
 * it back, but it needs no registry.  It serves where the registry does not
 * exist (without preloading) or does not see the writers (a hot standby,
 * whose writers run on the primary), and where a transaction's snapshot is
 * fixed (REPEATABLE READ, SERIALIZABLE), which an older horizon suits.  It
 * is safe because every key is at least its writer's top transaction id:
 * an event below the xmin was written by a transaction that had ended.
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
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/lmgr.h"
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

/* A new subtransaction's id, assigned now; the subtransaction commits. */
static FullTransactionId
horizon_subtransaction_id(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	FullTransactionId id;

	BeginInternalSubTransaction(NULL);
	id = GetCurrentFullTransactionId();
	ReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return id;
}

/*
 * es_horizon_key: the key of the current transaction's events (before the
 * store's offset), a transaction id of its own assigned and registered on
 * the first call (see the file header); without the registry, the
 * transaction's own id.
 */
FullTransactionId
es_horizon_key(void)
{
	HorizonSlot *slot;

	if (horizon_shared == NULL)
		return GetTopFullTransactionId();
	if (registered)
		return my_key;
	slot = &horizon_shared->slots[MyProc->pgprocno];
	slot->database = MyDatabaseId;
	pg_write_barrier();
	pg_atomic_write_u64(&slot->key, KEY_PENDING);
	/* From here the xact callback clears the slot, should the id fail. */
	registered = true;
	pg_memory_barrier();
	if (FullTransactionIdIsValid(GetTopFullTransactionIdIfAny()))
		my_key = horizon_subtransaction_id();
	else
		my_key = GetTopFullTransactionId();
	pg_write_barrier();
	pg_atomic_write_u64(&slot->key, U64FromFullTransactionId(my_key));
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
	"SELECT transaction FROM pg_catalog.pg_prepared_xacts"
	" WHERE database OPERATOR(pg_catalog.=) pg_catalog.current_database()",
	0, {InvalidOid}
};

/*
 * The ids of the transactions prepared in this database, *n of them, in the
 * current memory context.  Needs SPI.
 */
static TransactionId *
horizon_prepared(int *n)
{
	TransactionId *xids;
	uint64		i;

	if (SPI_execute_plan(es_plan(&prepared_plan), NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the prepared transactions");
	xids = palloc(sizeof(TransactionId) * Max(SPI_processed, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		xids[i] = DatumGetTransactionId(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1,
													  &isnull));
	}
	*n = (int) SPI_processed;
	SPI_freetuptable(SPI_tuptable);
	return xids;
}

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
 * committed and visible in the snapshot, as its writer's top transaction id
 * is at most its key (see the file header).  Any transaction with an id
 * holds it back.  Needs SPI.
 */
FullTransactionId
es_commit_horizon_of(Snapshot snapshot)
{
	return horizon_in_store(widen_xid(snapshot->xmin));
}

/* Wait for a key being taken: an id assignment away, unless XidGenLock is busy. */
static uint64
horizon_wait_key(pg_atomic_uint64 *key)
{
	uint64		value;
	int			spins = 0;

	while ((value = pg_atomic_read_u64(key)) == KEY_PENDING)
	{
		if (++spins < 1000)
			SPIN_DELAY();
		else
		{
			CHECK_FOR_INTERRUPTS();
			pg_usleep(100L);
		}
	}
	return value;
}

/*
 * es_commit_horizon_push: the commit horizon now, with a snapshot pushed as
 * the active one (the caller pops it) that sees every event below it.  Only
 * transactions that have appended hold it back (see the file header).
 * Without a registry that sees the writers, or where the transaction's
 * snapshot is fixed, the snapshot's horizon.  Needs SPI and an active
 * snapshot.
 */
FullTransactionId
es_commit_horizon_push(void)
{
	FullTransactionId bound;
	uint64		min;
	int			i;

	if (horizon_shared == NULL || IsolationUsesXactSnapshot() || RecoveryInProgress())
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
		uint64		key = horizon_wait_key(&slot->key);

		pg_read_barrier();
		/* Keys of other stores (databases) are not this store's concern. */
		if (key != KEY_NONE && key < min && slot->database == MyDatabaseId)
			min = key;
	}
	/* After the registry: a transaction prepares before it leaves it. */
	if (max_prepared_xacts > 0)
	{
		int			n;
		TransactionId *prepared = horizon_prepared(&n);

		for (i = 0; i < n; i++)
			min = Min(min, U64FromFullTransactionId(widen_xid(prepared[i])));
		pfree(prepared);
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

/*
 * es_commit_horizon_wait: wait until every transaction that had appended to
 * the store when called has ended, committed or not: after it, a new
 * snapshot sees every event whose position had been taken by then (an
 * appender registers before it takes positions, see the file header).
 *
 * Waits on the transactions' locks, as CREATE INDEX CONCURRENTLY waits for
 * older transactions, so that the wait shows in pg_locks and is cancelled
 * by lock_timeout.  Without a registry that sees the writers, waits for
 * every transaction that had an id.  The current transaction must not have
 * appended: it would wait for itself.  Needs SPI and an active snapshot.
 */
void
es_commit_horizon_wait(void)
{
	uint64		bound = U64FromFullTransactionId(ReadNextFullTransactionId());
	Snapshot	snap;
	uint32		n;
	int			i;

	if (registered || (horizon_shared == NULL && FullTransactionIdIsValid(GetTopFullTransactionIdIfAny())))
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("this transaction has written, and would wait for itself"),
				 errdetail("The call waits for every transaction that was appending when it began."),
				 errhint("Call it in a transaction of its own.")));
	if (horizon_shared == NULL || RecoveryInProgress())
	{
		snap = GetLatestSnapshot();
		for (n = 0; n < snap->xcnt; n++)
			XactLockTableWait(snap->xip[n], NULL, NULL, XLTW_None);
		return;
	}
	pg_memory_barrier();
	for (i = 0; i < horizon_shared->nslots; i++)
	{
		HorizonSlot *slot = &horizon_shared->slots[i];
		uint64		key = horizon_wait_key(&slot->key);

		pg_read_barrier();
		if (key != KEY_NONE && key < bound && slot->database == MyDatabaseId)
			XactLockTableWait(XidFromFullTransactionId(FullTransactionIdFromU64(key)), NULL, NULL,
							  XLTW_None);
	}
	/* A transaction prepares before it leaves the registry. */
	if (max_prepared_xacts > 0)
	{
		int			nprepared;
		TransactionId *prepared = horizon_prepared(&nprepared);

		for (i = 0; i < nprepared; i++)
			if (U64FromFullTransactionId(widen_xid(prepared[i])) < bound)
				XactLockTableWait(prepared[i], NULL, NULL, XLTW_None);
		pfree(prepared);
	}
}

/*
 * Widen a key or a transaction id of a PGPROC and add a row for its backend
 * to es_horizon_holders' result.
 */
static void
holders_add(ReturnSetInfo *rsinfo, int pgprocno, FullTransactionId key)
{
	Datum		values[2];
	bool		nulls[2] = {false, false};
	int			pid = ProcGlobal->allProcs[pgprocno].pid;

	/* A prepared transaction's PGPROC has no pid: pg_prepared_xacts lists it. */
	if (pid == 0)
		return;
	values[0] = Int32GetDatum(pid);
	values[1] = FullTransactionIdGetDatum(key);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

/*
 * es_horizon_holders(): the backends holding the commit horizon back, with
 * their keys (before the store's offset): those that appended in this
 * database, or, where es_commit_horizon_push uses the snapshot's xmin
 * (no registry, a hot standby), every backend with a transaction id.  Read
 * without a lock: a monitoring view.
 */
PG_FUNCTION_INFO_V1(es_horizon_holders);
Datum
es_horizon_holders(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			n = MaxBackends + NUM_AUXILIARY_PROCS;
	int			i;

	InitMaterializedSRF(fcinfo, 0);
	if (horizon_shared == NULL || RecoveryInProgress())
	{
		for (i = 0; i < n; i++)
		{
			TransactionId xid = ProcGlobal->allProcs[i].xid;

			if (TransactionIdIsNormal(xid))
				holders_add(rsinfo, i, widen_xid(xid));
		}
		return (Datum) 0;
	}
	for (i = 0; i < horizon_shared->nslots; i++)
	{
		HorizonSlot *slot = &horizon_shared->slots[i];
		uint64		key = pg_atomic_read_u64(&slot->key);

		pg_read_barrier();
		if (key != KEY_NONE && key != KEY_PENDING && slot->database == MyDatabaseId)
			holders_add(rsinfo, i, FullTransactionIdFromU64(key));
	}
	return (Datum) 0;
}
