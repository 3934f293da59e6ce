/*-------------------------------------------------------------------------
 *
 * stats.c
 *	  Statistics in shared memory (only when the library is preloaded):
 *	  counters of committed appends, the commit times of recent commit-order
 *	  keys, and each consumer's latency histograms; the listener of the
 *	  write path that feeds the first two; the SQL functions that read
 *	  them.
 *
 * Locking: the append counters are an atomic plus a per-second ring under a
 * spinlock; each commit-time slot has a spinlock of its own; consumer
 * statistics are written by the workers (and inline projections at commit)
 * and read by SQL functions under an LWLock.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "delivery/stats.h"

#include <math.h>

#include "access/xact.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/lwlock.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "core/shmem.h"
#include "delivery/worker.h"
#include "write/append.h"

#define SECOND_SLOTS		64		/* per-second append counts, for the last minute */
#define COMMIT_RING			16384	/* commit times of recent keys */
#define MAX_CONSUMERS		64
#define MAX_NEST			64		/* subtransaction levels counted apart */
#define MAX_PENDING_PROJECTED 32	/* (projection, level) pairs counted apart */

/*
 * Latency histogram buckets, in microseconds: exact below 16, then four
 * buckets per power of two (about 12% wide), up to 2^40 us.
 */
#define LATENCY_BUCKETS		(16 + 37 * 4)

typedef struct LatencyHistogram
{
	uint64		counts[LATENCY_BUCKETS];
} LatencyHistogram;

typedef struct ConsumerStats
{
	char		name[NAMEDATALEN];	/* "" when free */
	Oid			database;		/* names are a database's: built-in ones in each */
	pg_atomic_uint64 events_applied;
	TimestampTz last_applied_at;
	LatencyHistogram total;
	int64		recent_minute[2];	/* the minutes recent[] cover */
	LatencyHistogram recent[2];
} ConsumerStats;

typedef struct CommitTime
{
	slock_t		mutex;
	uint64		key;
	TimestampTz at;
} CommitTime;

typedef struct StatsShared
{
	LWLock	   *lock;			/* consumers[] */
	slock_t		mutex;			/* second_*[] */
	TimestampTz counting_since;
	pg_atomic_uint64 events_appended;
	int64		second_of[SECOND_SLOTS];
	uint64		second_count[SECOND_SLOTS];
	CommitTime	commits[COMMIT_RING];
	ConsumerStats consumers[MAX_CONSUMERS];
} StatsShared;

static StatsShared *stats_shared = NULL;

/* Events the current transaction's inline projections applied, per level. */
typedef struct PendingProjected
{
	ConsumerStats *slot;
	int			level;
	uint64		count;
} PendingProjected;

static PendingProjected pending_projected[MAX_PENDING_PROJECTED];
static int	npending_projected = 0;

static void count_projected(void);

static Size
stats_shmem_size(void)
{
	return sizeof(StatsShared);
}

static void
stats_shmem_init(void *segment)
{
	StatsShared *shared = (StatsShared *) segment;
	int			i;

	shared->lock = &(GetNamedLWLockTranche("ultracore_es stats"))->lock;
	SpinLockInit(&shared->mutex);
	shared->counting_since = GetCurrentTimestamp();
	pg_atomic_init_u64(&shared->events_appended, 0);
	for (i = 0; i < COMMIT_RING; i++)
		SpinLockInit(&shared->commits[i].mutex);
}

/*
 * Just before commit, stamp the transaction's commit-order keys with the
 * time (the workers measure latencies from it).  A key shared by
 * transactions (raised to an aggregate's last key) keeps the earliest
 * stamp.
 */
static void
stats_committing(const uint64 *keys, int nkeys)
{
	TimestampTz now;
	int			i;

	if (stats_shared == NULL)
		return;
	now = GetCurrentTimestamp();
	for (i = 0; i < nkeys; i++)
	{
		CommitTime *ct = &stats_shared->commits[keys[i] % COMMIT_RING];

		SpinLockAcquire(&ct->mutex);
		if (ct->key != keys[i])
		{
			ct->key = keys[i];
			ct->at = now;
		}
		SpinLockRelease(&ct->mutex);
	}
}

/* At commit, count the transaction's appends. */
static void
stats_committed(uint64 appended)
{
	TimestampTz now;
	int64		second;
	int			slot;

	if (stats_shared == NULL)
		return;
	now = GetCurrentTimestamp();
	second = now / USECS_PER_SEC;
	slot = (int) (second % SECOND_SLOTS);
	pg_atomic_fetch_add_u64(&stats_shared->events_appended, appended);
	SpinLockAcquire(&stats_shared->mutex);
	if (stats_shared->second_of[slot] != second)
	{
		stats_shared->second_of[slot] = second;
		stats_shared->second_count[slot] = 0;
	}
	stats_shared->second_count[slot] += appended;
	SpinLockRelease(&stats_shared->mutex);
}

static const EsAppendListener stats_listener = {
	.committing = stats_committing,
	.committed = stats_committed,
};

/* At commit, the events of the transaction's inline projections count. */
static void
stats_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT && stats_shared != NULL)
		count_projected();
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PREPARE || event == XACT_EVENT_PARALLEL_ABORT)
		npending_projected = 0;
}

/* A released subtransaction's projected events become its parent's; an aborted one's vanish. */
static void
stats_subxact_callback(SubXactEvent event, SubTransactionId mySubid, SubTransactionId parentSubid,
					   void *arg)
{
	int			level = Min(GetCurrentTransactionNestLevel(), MAX_NEST);
	int			i;

	if (event == SUBXACT_EVENT_COMMIT_SUB && level > 1)
	{
		for (i = 0; i < npending_projected; i++)
			if (pending_projected[i].level >= level)
				pending_projected[i].level = level - 1;
	}
	else if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		int			kept = 0;

		for (i = 0; i < npending_projected; i++)
			if (pending_projected[i].level < level)
				pending_projected[kept++] = pending_projected[i];
		npending_projected = kept;
	}
}

/* es_stats_init: from _PG_init.  Shared memory only when preloading. */
void
es_stats_init(void)
{
	es_shmem_add("ultracore_es stats", stats_shmem_size, 1, (void **) &stats_shared, stats_shmem_init);
	es_append_listen(&stats_listener);
	RegisterXactCallback(stats_xact_callback, NULL);
	RegisterSubXactCallback(stats_subxact_callback, NULL);
}

/*
 * es_stats_commit_time: when the transaction that used key committed, if
 * still remembered; else fallback.
 */
TimestampTz
es_stats_commit_time(FullTransactionId key, TimestampTz fallback)
{
	uint64		k = U64FromFullTransactionId(key);
	CommitTime *ct;
	TimestampTz at = fallback;

	if (stats_shared == NULL)
		return fallback;
	ct = &stats_shared->commits[k % COMMIT_RING];
	SpinLockAcquire(&ct->mutex);
	if (ct->key == k)
		at = ct->at;
	SpinLockRelease(&ct->mutex);
	return at;
}

static int
latency_bucket(uint64 us)
{
	int			e;

	if (us < 16)
		return (int) us;
	e = 63 - __builtin_clzll(us);	/* floor(log2(us)) >= 4 */
	return Min(16 + (e - 4) * 4 + (int) ((us >> (e - 2)) & 3), LATENCY_BUCKETS - 1);
}

/* The middle of a bucket, in milliseconds. */
static double
latency_bucket_ms(int b)
{
	int			e;
	double		lo;
	double		width;

	if (b < 16)
		return b / 1000.0;
	e = (b - 16) / 4 + 4;
	width = ldexp(1.0, e - 2);
	lo = ldexp(1.0, e) + ((b - 16) % 4) * width;
	return (lo + width / 2) / 1000.0;
}

static double
latency_percentile(const LatencyHistogram *h, double fraction, bool *valid)
{
	uint64		total = 0;
	uint64		rank;
	uint64		seen = 0;
	int			b;

	for (b = 0; b < LATENCY_BUCKETS; b++)
		total += h->counts[b];
	*valid = total > 0;
	if (total == 0)
		return 0;
	rank = (uint64) ceil(fraction * total);
	for (b = 0; b < LATENCY_BUCKETS; b++)
	{
		seen += h->counts[b];
		if (seen >= rank)
			return latency_bucket_ms(b);
	}
	return latency_bucket_ms(LATENCY_BUCKETS - 1);
}

/*
 * The statistics slot of a consumer or inline projection, taken on first use;
 * NULL when all are taken.  Caller holds the lock exclusively.
 */
static ConsumerStats *
consumer_slot(const char *name)
{
	int			i;

	for (i = 0; i < MAX_CONSUMERS; i++)
		if (stats_shared->consumers[i].database == MyDatabaseId &&
			strcmp(stats_shared->consumers[i].name, name) == 0)
			return &stats_shared->consumers[i];
	for (i = 0; i < MAX_CONSUMERS; i++)
		if (stats_shared->consumers[i].name[0] == '\0')
		{
			strlcpy(stats_shared->consumers[i].name, name, NAMEDATALEN);
			stats_shared->consumers[i].database = MyDatabaseId;
			pg_atomic_init_u64(&stats_shared->consumers[i].events_applied, 0);
			return &stats_shared->consumers[i];
		}
	return NULL;
}

/*
 * The slot of an inline projection, from a backend-local cache: a slot,
 * once taken, keeps its name for the life of the server.
 */
static ConsumerStats *
projection_slot(const char *name)
{
	static char cached_name[MAX_CONSUMERS][NAMEDATALEN];
	static ConsumerStats *cached_slot[MAX_CONSUMERS];
	static int	ncached = 0;
	ConsumerStats *cs;
	int			i;

	for (i = 0; i < ncached; i++)
		if (strcmp(cached_name[i], name) == 0)
			return cached_slot[i];
	LWLockAcquire(stats_shared->lock, LW_EXCLUSIVE);
	cs = consumer_slot(name);
	LWLockRelease(stats_shared->lock);
	if (cs != NULL && ncached < MAX_CONSUMERS)
	{
		strlcpy(cached_name[ncached], name, NAMEDATALEN);
		cached_slot[ncached++] = cs;
	}
	return cs;
}

/*
 * At commit: the events of the transaction's inline projections count.
 * Lock-free, as commits are frequent: an atomic counter, and a timestamp
 * whose readers may see the previous value.
 */
static void
count_projected(void)
{
	TimestampTz now;
	int			i;

	if (npending_projected == 0)
		return;
	now = GetCurrentTimestamp();
	for (i = 0; i < npending_projected; i++)
	{
		pg_atomic_fetch_add_u64(&pending_projected[i].slot->events_applied, pending_projected[i].count);
		pending_projected[i].slot->last_applied_at = now;
	}
}

/*
 * es_stats_note_projected: an inline projection applied n events; counted
 * when (and if) the transaction commits.  Statistics: beyond
 * MAX_PENDING_PROJECTED pairs in one transaction, counts are dropped.
 */
void
es_stats_note_projected(const char *projection, int n)
{
	int			level = Min(GetCurrentTransactionNestLevel(), MAX_NEST);
	ConsumerStats *slot;
	int			i;

	if (stats_shared == NULL || (slot = projection_slot(projection)) == NULL)
		return;
	for (i = 0; i < npending_projected; i++)
		if (pending_projected[i].level == level && pending_projected[i].slot == slot)
		{
			pending_projected[i].count += n;
			return;
		}
	if (npending_projected == MAX_PENDING_PROJECTED)
		return;
	pending_projected[npending_projected].slot = slot;
	pending_projected[npending_projected].level = level;
	pending_projected[npending_projected].count = n;
	npending_projected++;
}

/*
 * es_stats_record_applied: a worker applied n events for consumer, with
 * these commit-to-applied latencies (microseconds).
 */
void
es_stats_record_applied(const char *consumer, int n, const uint64 *latencies_us, TimestampTz now)
{
	ConsumerStats *cs;
	int64		minute = now / (60 * USECS_PER_SEC);
	int			r = (int) (minute % 2);
	int			i;

	if (stats_shared == NULL || n == 0)
		return;
	LWLockAcquire(stats_shared->lock, LW_EXCLUSIVE);
	cs = consumer_slot(consumer);
	if (cs != NULL)
	{
		if (cs->recent_minute[r] != minute)
		{
			cs->recent_minute[r] = minute;
			memset(&cs->recent[r], 0, sizeof(LatencyHistogram));
		}
		for (i = 0; i < n; i++)
		{
			int			b = latency_bucket(latencies_us[i]);

			cs->total.counts[b]++;
			cs->recent[r].counts[b]++;
		}
		pg_atomic_fetch_add_u64(&cs->events_applied, n);
		cs->last_applied_at = now;
	}
	LWLockRelease(stats_shared->lock);
}

/*
 * es_store_counters() returns (worker_pid, worker_started_at, counting_since,
 * events_appended, appended_last_minute): NULLs when not preloaded.
 */
PG_FUNCTION_INFO_V1(es_store_counters);
Datum
es_store_counters(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[5];
	bool		nulls[5] = {true, true, true, true, true};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (stats_shared != NULL)
	{
		int64		now_second = GetCurrentTimestamp() / USECS_PER_SEC;
		uint64		last_minute = 0;
		int			pid;
		TimestampTz started;
		int			i;

		SpinLockAcquire(&stats_shared->mutex);
		for (i = 0; i < SECOND_SLOTS; i++)
			if (stats_shared->second_of[i] > now_second - 60 && stats_shared->second_of[i] <= now_second)
				last_minute += stats_shared->second_count[i];
		SpinLockRelease(&stats_shared->mutex);
		(void) es_worker_first_delivery(&pid, &started);

		values[0] = Int32GetDatum(pid);
		nulls[0] = (pid == 0);
		values[1] = TimestampTzGetDatum(started);
		nulls[1] = (pid == 0);
		values[2] = TimestampTzGetDatum(stats_shared->counting_since);
		nulls[2] = false;
		values[3] = Int64GetDatum((int64) pg_atomic_read_u64(&stats_shared->events_appended));
		nulls[3] = false;
		values[4] = Int64GetDatum((int64) last_minute);
		nulls[4] = false;
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

/*
 * es_consumer_counters() returns setof (consumer, events_applied,
 * latency_p50_ms, latency_p99_ms, recent_latency_p50_ms,
 * recent_latency_p99_ms, last_applied_at): since the worker started, and
 * over the current and previous minute.
 */
PG_FUNCTION_INFO_V1(es_consumer_counters);
Datum
es_consumer_counters(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int64		minute = GetCurrentTimestamp() / (60 * USECS_PER_SEC);
	int			i;

	InitMaterializedSRF(fcinfo, 0);
	if (stats_shared == NULL)
		return (Datum) 0;
	LWLockAcquire(stats_shared->lock, LW_SHARED);
	for (i = 0; i < MAX_CONSUMERS; i++)
	{
		ConsumerStats *cs = &stats_shared->consumers[i];
		LatencyHistogram recent;
		Datum		values[7];
		bool		nulls[7] = {false, false, false, false, false, false, false};
		bool		valid;
		int			r;
		int			b;

		if (cs->name[0] == '\0' || cs->database != MyDatabaseId)
			continue;
		memset(&recent, 0, sizeof(recent));
		for (r = 0; r < 2; r++)
			if (cs->recent_minute[r] >= minute - 1)
				for (b = 0; b < LATENCY_BUCKETS; b++)
					recent.counts[b] += cs->recent[r].counts[b];
		values[0] = CStringGetTextDatum(cs->name);
		values[1] = Int64GetDatum((int64) pg_atomic_read_u64(&cs->events_applied));
		values[2] = Float8GetDatum(latency_percentile(&cs->total, 0.50, &valid));
		nulls[2] = !valid;
		values[3] = Float8GetDatum(latency_percentile(&cs->total, 0.99, &valid));
		nulls[3] = !valid;
		values[4] = Float8GetDatum(latency_percentile(&recent, 0.50, &valid));
		nulls[4] = !valid;
		values[5] = Float8GetDatum(latency_percentile(&recent, 0.99, &valid));
		nulls[5] = !valid;
		values[6] = TimestampTzGetDatum(cs->last_applied_at);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	LWLockRelease(stats_shared->lock);
	return (Datum) 0;
}

/*
 * es_reset_consumer_counters(consumer text) returns bigint
 *
 * Starts a consumer's counters and latency histograms again (all
 * consumers' with NULL), to measure from now; returns how many were reset.
 * The progress counters of es_consumers are not touched.
 */
PG_FUNCTION_INFO_V1(es_reset_consumer_counters);
Datum
es_reset_consumer_counters(PG_FUNCTION_ARGS)
{
	char	   *consumer = PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0));
	int64		reset = 0;
	int			i;

	if (stats_shared == NULL)
		PG_RETURN_INT64(0);
	LWLockAcquire(stats_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < MAX_CONSUMERS; i++)
	{
		ConsumerStats *cs = &stats_shared->consumers[i];

		if (cs->name[0] == '\0' || cs->database != MyDatabaseId ||
			(consumer != NULL && strcmp(cs->name, consumer) != 0))
			continue;
		pg_atomic_write_u64(&cs->events_applied, 0);
		memset(&cs->total, 0, sizeof(cs->total));
		memset(cs->recent, 0, sizeof(cs->recent));
		memset(cs->recent_minute, 0, sizeof(cs->recent_minute));
		reset++;
	}
	LWLockRelease(stats_shared->lock);
	PG_RETURN_INT64(reset);
}
