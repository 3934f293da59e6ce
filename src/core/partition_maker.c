/*-------------------------------------------------------------------------
 *
 * partition_maker.c
 *	  The partitions of es_events made ahead of the appends, and the 1.0
 *	  table bounded below them: a step of the first delivery worker, and
 *	  es_make_partitions for an operator who wants them now.
 *
 * The extension manages its partitions itself rather than through
 * pg_partman: its bounds follow a sequence, not time; the 1.0 table must be
 * bounded without a rewrite or a long lock (below); a partition gets the
 * append-only trigger and the per-partition unique index the C paths need;
 * and the worker that makes them is already there, in every database.
 *
 * Ranges are ultracore_es.partition_events positions wide, contiguous from
 * the first one made, named es_events_<first position, 19 digits>.  The
 * worker keeps ultracore_es.partitions_ahead of them made past the last
 * position taken.  An append never waits for one: past the ranges made, it
 * goes to es_events_overflow, the DEFAULT partition, where its event stays
 * (the next range then starts above the positions taken).  Each partition
 * is created empty and attached in the same transaction: an ATTACH takes
 * SHARE UPDATE EXCLUSIVE on es_events, which appends pass, and ACCESS
 * EXCLUSIVE on the DEFAULT partition, while it checks that none of its
 * rows fall in the new range; readers leave that partition alone while it
 * is known empty (partitions.c).  The worker asks for every lock that
 * appends or reads take without waiting (es_partition_lock): a busy table
 * is tried again at the next pass instead of queueing them behind it.
 *
 * The 1.0 table, attached FROM (MINVALUE) TO (MAXVALUE) by the update
 * (without a scan), is bounded in three transactions, so that no lock is
 * held while its rows are read:
 *	1. CHECK (position < B) NOT VALID, B a whole number of partitions past
 *	   the last position taken (partitions_ahead of them, so that appends
 *	   do not reach B before step 3; the append does not check constraints,
 *	   so before steps 2 and 3 the maker looks for rows past B, and starts
 *	   again further on when it finds some);
 *	2. VALIDATE CONSTRAINT: a scan under SHARE UPDATE EXCLUSIVE, which
 *	   appends pass;
 *	3. DETACH and ATTACH FROM (MINVALUE) TO (B), which the valid CHECK
 *	   spares a scan, and the ranges from B: a short ACCESS EXCLUSIVE lock
 *	   on es_events.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "core/partition_maker.h"

#include "access/table.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"

#include "core/errors.h"
#include "core/guc.h"
#include "core/partitions.h"

/*
 * How long a step waits for a lock before it gives up until the next pass.
 * The locks that appends would queue behind (ACCESS EXCLUSIVE on a table
 * they write) are not waited for at all: they are taken first, or the step
 * is left for the next pass (es_partition_lock).
 */
#define MAKER_LOCK_TIMEOUT "1s"
#define MAKER_LOCK_TRIES	100

/* The constraint that bounds the 1.0 table (step 1). */
#define BOUND_CONSTRAINT "es_events_1_0_bound"

void
es_partition_exec(const char *sql)
{
	if (SPI_execute(sql, false, 0) < 0)
		elog(ERROR, "could not run: %s", sql);
}

/* An int8 the query returns (NULL: isnull set). */
static int64
maker_int8(const char *sql, bool *isnull)
{
	if (SPI_execute(sql, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not run: %s", sql);
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, isnull));
}

/*
 * Take an ACCESS EXCLUSIVE lock on relid, a table that appends and reads
 * lock too (every read of an aggregate opens every partition): a request
 * that waited would queue them all behind it, for as long as some
 * transaction holds the table (a prepared one can hold it for hours).  The
 * worker asks without waiting, again every millisecond for a while, and
 * otherwise leaves the step for its next pass (false).  es_make_partitions
 * (wait) waits, for lock_timeout at most.
 */
bool
es_partition_lock(Oid relid, bool wait)
{
	int			i;

	if (wait)
	{
		LockRelationOid(relid, AccessExclusiveLock);
		return true;
	}
	for (i = 0; i < MAKER_LOCK_TRIES; i++)
	{
		if (ConditionalLockRelationOid(relid, AccessExclusiveLock))
			return true;
		CHECK_FOR_INTERRUPTS();
		pg_usleep(1000L);
	}
	elog(DEBUG1, "ultracore_es: partition maker: %s is in use, left for the next pass", get_rel_name(relid));
	return false;
}

/*
 * Record what the DEFAULT partition (overflow) holds, when the partition
 * maker can hold it SHARE (no insert under way, none can start): nothing
 * (no block at all), readers then leave it alone; else, once after a
 * restart, its highest position (partitions.c).  A table that once held
 * rows keeps them: it stays read.
 */
static void
maker_check_overflow(const EsPartition *overflow)
{
	if (es_overflow_known_empty() || !ConditionalLockRelationOid(overflow->relid, ShareLock))
		return;
	es_overflow_measure(overflow);
}

/*
 * Make, attach and protect the range partition [from, to), with the indexes
 * of every partition (those of the 1.0 table).
 */
static void
maker_make_range(EsStore *s, int64 from, int64 to)
{
	char		name[NAMEDATALEN];
	const char *q;
	StringInfoData sql;

	snprintf(name, sizeof(name), "es_events_%019lld", (long long) from);
	q = quote_identifier(name);
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "CREATE TABLE %s.%s (LIKE %s.es_events INCLUDING DEFAULTS);"
					 "CREATE UNIQUE INDEX %s ON %s.%s (aggregate_id, version);"
					 "CREATE INDEX %s ON %s.%s (tx_id, position);"
					 "CREATE UNIQUE INDEX %s ON %s.%s (position);"
					 "CREATE INDEX %s ON %s.%s (correlation_id, position) WHERE correlation_id IS NOT NULL;"
					 "CREATE TRIGGER es_events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON %s.%s"
					 " FOR EACH STATEMENT EXECUTE FUNCTION %s.es_refuse_modification();"
					 "ALTER TABLE %s.%s ENABLE ALWAYS TRIGGER es_events_append_only;"
					 "REVOKE ALL ON TABLE %s.%s FROM PUBLIC;"
					 "COMMENT ON TABLE %s.%s IS 'ultracore_es: partition of es_events, made ahead by the worker';"
					 "ALTER TABLE %s.es_events ATTACH PARTITION %s.%s FOR VALUES FROM (" INT64_FORMAT ") TO (" INT64_FORMAT ")",
					 s->nspname, q, s->nspname,
					 quote_identifier(psprintf("%s_version_key", name)), s->nspname, q,
					 quote_identifier(psprintf("%s_commit_order", name)), s->nspname, q,
					 quote_identifier(psprintf("%s_position_key", name)), s->nspname, q,
					 quote_identifier(psprintf("%s_correlation", name)), s->nspname, q,
					 s->nspname, q, s->nspname,
					 s->nspname, q,
					 s->nspname, q,
					 s->nspname, q,
					 s->nspname, s->nspname, q, from, to);
	es_partition_exec(sql.data);
	elog(DEBUG1, "ultracore_es: made partition %s of es_events for positions " INT64_FORMAT " to " INT64_FORMAT,
		 name, from, to - 1);
}

/*
 * Whether an append took a position at or past bound into the 1.0 table:
 * the append inserts without the executor, which alone checks CHECK
 * constraints, and appends reach the bound when step 3 waits long for its
 * lock (partitions_ahead partitions of them).  The bound is dropped then,
 * to be set again further on; else the ATTACH, trusting the CHECK, would
 * leave rows outside the table's range, where no reader by position finds
 * them.  Under the table's ACCESS EXCLUSIVE lock in step 3, which appends
 * wait for; before VALIDATE in step 2, which would fail at every pass.
 */
static bool
maker_bound_passed(EsStore *s, const EsPartition *part, const char *table, int64 bound, bool wait)
{
	bool		isnull;
	int64		top = maker_int8(psprintf("SELECT max(position) FROM ONLY %s.%s", s->nspname, table), &isnull);

	if (isnull || top < bound)
		return false;
	if (es_partition_lock(part->relid, wait))
	{
		es_partition_exec(psprintf("ALTER TABLE %s.%s DROP CONSTRAINT " BOUND_CONSTRAINT, s->nspname, table));
		ereport(LOG,
				(errmsg("ultracore_es: appends reached the bound " INT64_FORMAT " of partition %s of es_events before it was applied; bounding it again further on",
						bound, table)));
	}
	return true;
}

/*
 * Bound the 1.0 table (part), one step per call (see the file's comment).
 * Returns whether it is bounded now.
 */
static bool
maker_bound_1_0(EsStore *s, const EsPartition *part, Oid default_relid, int64 last, bool wait)
{
	const char *table = quote_identifier(get_rel_name(part->relid));
	char	   *sql;
	bool		isnull;
	bool		valid;
	int64		bound;
	int64		width = es_partition_events;

	sql = psprintf("SELECT c.convalidated::int4::int8 FROM pg_catalog.pg_constraint c"
				   " WHERE c.conrelid = %u AND c.conname = '" BOUND_CONSTRAINT "'", part->relid);
	if (SPI_execute(sql, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not run: %s", sql);
	if (SPI_processed == 0)
	{
		if (!es_partition_lock(part->relid, wait))
			return false;
		bound = (last / width + 1 + es_partitions_ahead) * width;
		es_partition_exec(psprintf("ALTER TABLE %s.%s ADD CONSTRAINT " BOUND_CONSTRAINT
							" CHECK (position < " INT64_FORMAT ") NOT VALID", s->nspname, table, bound));
		return false;
	}
	valid = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) != 0;
	/* A bound past int4's range is printed quoted, as '3000000000'::bigint. */
	bound = maker_int8(psprintf("SELECT (pg_catalog.regexp_match(pg_catalog.pg_get_constraintdef(c.oid),"
								" '< \\(?''?(\\d+)'))[1]::int8 FROM pg_catalog.pg_constraint c"
								" WHERE c.conrelid = %u AND c.conname = '" BOUND_CONSTRAINT "'", part->relid),
					   &isnull);
	if (isnull)
		elog(ERROR, "could not read the bound of %s", table);
	if (!valid)
	{
		if (!maker_bound_passed(s, part, table, bound, wait))
			es_partition_exec(psprintf("ALTER TABLE %s.%s VALIDATE CONSTRAINT " BOUND_CONSTRAINT,
									   s->nspname, table));
		return false;
	}
	if (!es_partition_lock(s->events_relid, wait) || !es_partition_lock(part->relid, wait) ||
		(OidIsValid(default_relid) && !es_partition_lock(default_relid, wait)) ||
		maker_bound_passed(s, part, table, bound, wait))
		return false;
	es_partition_exec(psprintf("ALTER TABLE %s.es_events DETACH PARTITION %s.%s;"
						"ALTER TABLE %s.es_events ATTACH PARTITION %s.%s"
						" FOR VALUES FROM (MINVALUE) TO (" INT64_FORMAT ")",
						s->nspname, s->nspname, table, s->nspname, s->nspname, table, bound));
	ereport(LOG,
			(errmsg("ultracore_es: partition %s of es_events holds the positions below " INT64_FORMAT
					"; the partitions made ahead start there", table, bound)));
	return true;
}

/*
 * The end of the ranges made (PG_INT64_MIN: none) in *next, the range
 * partition still bounded by MAXVALUE (the 1.0 table before it is bounded;
 * relid invalid: none) in *unbounded, the DEFAULT partition in *overflow
 * (relid invalid: none).  False for a 1.0 catalog, whose es_events is a
 * plain table.  es_events is closed again (kept locked):
 * DDL refuses a table this session holds open.
 */
static bool
maker_read_ranges(EsStore *s, int64 *next, EsPartition *unbounded, EsPartition *overflow)
{
	Relation	events = table_open(s->events_relid, AccessShareLock);
	const EsPartitions *p;
	int			i;

	*next = PG_INT64_MIN;
	memset(overflow, 0, sizeof(EsPartition));
	memset(unbounded, 0, sizeof(EsPartition));
	if (events->rd_rel->relkind != RELKIND_PARTITIONED_TABLE)
	{
		table_close(events, NoLock);
		return false;
	}
	p = es_partitions(s, events);
	for (i = 0; i < p->n; i++)
	{
		if (p->parts[i].is_default)
			*overflow = p->parts[i];
		else if (p->parts[i].to_position == PG_INT64_MAX)
			*unbounded = p->parts[i];
		else
			*next = Max(*next, p->parts[i].to_position);
	}
	table_close(events, NoLock);
	return true;
}

/*
 * es_partitions_make: make the partitions missing up to position upto (the
 * last position taken plus partitions_ahead partitions when 0), after
 * bounding the 1.0 table (one step of it per call, with nothing else
 * made).  The number of partitions made in *made; false when that is not
 * all (a step of the bounding, or a table in use: see maker_lock for wait).  Runs in
 * the caller's transaction, as the owner of the store, with SPI.
 */
bool
es_partitions_make(EsStore *s, int64 upto, bool wait, int *made)
{
	EsRole		role = es_become_owner(s);
	int64		last;
	int64		next;
	EsPartition unbounded;
	EsPartition overflow;

	*made = 0;
	(void) set_config_option("lock_timeout", MAKER_LOCK_TIMEOUT, PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, 0, false);
	/*
	 * One maker at a time (the worker, es_make_partitions): the lock ATTACH
	 * takes anyway, which appends and reads pass.  Taken before the ranges
	 * are read, it brings the ranges another maker committed meanwhile.
	 */
	if (wait)
		LockRelationOid(s->events_relid, ShareUpdateExclusiveLock);
	else if (!ConditionalLockRelationOid(s->events_relid, ShareUpdateExclusiveLock))
	{
		es_become(role);
		return false;
	}
	last = es_last_position(false);
	if (!maker_read_ranges(s, &next, &unbounded, &overflow))
	{
		es_become(role);
		return true;			/* a 1.0 catalog: nothing to partition */
	}
	if (OidIsValid(unbounded.relid))
	{
		if (!maker_bound_1_0(s, &unbounded, overflow.relid, last, wait))
		{
			es_become(role);
			return false;
		}
		CommandCounterIncrement();
		(void) maker_read_ranges(s, &next, &unbounded, &overflow);
	}
	if (upto <= 0)
		upto = last + (int64) es_partition_events * es_partitions_ahead;
	/* Past the ranges, appends went to the DEFAULT partition: start above them. */
	if (next <= last)
		next = last + 1;
	/*
	 * An ATTACH locks the DEFAULT partition ACCESS EXCLUSIVE, to check that
	 * none of its rows fall in the range.  Known empty, no reader holds it
	 * (partitions.c); else the worker tries again at its next pass.
	 */
	if (OidIsValid(overflow.relid))
		maker_check_overflow(&overflow);
	if (next <= upto && OidIsValid(overflow.relid))
	{
		if (!es_partition_lock(overflow.relid, wait))
		{
			es_become(role);
			return false;
		}
		/*
		 * The last position again, now that no append can put a row in the
		 * DEFAULT partition: appends there between the first read and the
		 * lock have rows in the range, whose ATTACH then failed at every
		 * pass for as long as appends went on.  An append that takes a
		 * position from now on routes again once this commits (append.c),
		 * into the new range.
		 */
		last = es_last_position(false);
		if (next <= last)
			next = last + 1;
		upto = Max(upto, next);
	}
	while (next <= upto)
	{
		maker_make_range(s, next, next + es_partition_events);
		next += es_partition_events;
		(*made)++;
	}
	es_become(role);
	return true;
}

/*
 * es_make_partitions(events bigint DEFAULT NULL) returns integer
 *
 * Make now the partitions of es_events for the next events positions (NULL:
 * ultracore_es.partitions_ahead partitions), as the worker does at its
 * passes: before a bulk load, or in tests.  Returns how many it made.
 * Unlike the worker, it waits for the locks it needs (lock_timeout, 1 s).
 */
PG_FUNCTION_INFO_V1(es_make_partitions);
Datum
es_make_partitions(PG_FUNCTION_ARGS)
{
	EsCall		call;
	int64		events = PG_ARGISNULL(0) ? 0 : PG_GETARG_INT64(0);
	int			made;

	if (!PG_ARGISNULL(0) && events <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("events must be positive"),
				 errhint("Pass NULL for the worker's own reach: ultracore_es.partitions_ahead partitions.")));
	es_call_begin(fcinfo, &call);
	if (!es_partitions_make(call.store, events > 0 ? es_last_position(false) + events : 0, true, &made))
		ereport(NOTICE,
				(errmsg("not every partition of es_events was made"),
				 errdetail("The table of release 1.0 is being bounded, in three steps, each in a transaction of its own."),
				 errhint("Call es_make_partitions again in a new transaction, or let the worker go on.")));
	es_call_end(&call);
	PG_RETURN_INT32(made);
}
