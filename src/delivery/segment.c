/*-------------------------------------------------------------------------
 *
 * segment.c
 *	  Consumers split into segments by aggregate (es_register_handler's
 *	  parallelism): which segment an aggregate belongs to, how a consumer
 *	  is split again into another number of segments without losing or
 *	  repeating an event, and the fences that make that exact.
 *
 * A handler with parallelism N > 1 is delivered as N units, segment k
 * taking the events of the aggregates whose es_segment_of(aggregate_id, N)
 * is k; each unit has its checkpoint and retry state in
 * es_consumer_segments, and any worker may serve it (one at a time).  An
 * aggregate always falls in the same segment, so its events still reach
 * the handler once and in version order.  Unsplit consumers (N = 1) keep
 * their checkpoint in es_consumers, as before.
 *
 * Splitting again (N to M): the units of the current generation stop where
 * they are; the new generation's M units all start at the lowest of their
 * checkpoints, and the old units stay as fences: an event of old segment k
 * at or below its checkpoint, or in its skip set, was handled already, and
 * is passed over.  An unsplit consumer's skip set is kept the same way, as
 * a fence of one segment.  So
 * nothing is lost (every unit starts at or below every old checkpoint)
 * and nothing repeats (the fences), whatever the ledger's retention.
 * Fences go once every unit of the current generation has passed them.  A
 * retry pending in an old unit starts over (its attempts count again from
 * one); dead letters and their parked events stay, by aggregate.
 *
 * The registration (handler.c) splits under the consumer row's FOR UPDATE
 * lock, which waits for the batches under way (they hold it FOR KEY SHARE,
 * or FOR NO KEY UPDATE unsplit).
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "delivery/consumer_internal.h"

#include "catalog/pg_type.h"
#include "utils/builtins.h"
#include "utils/xid8.h"

#include "core/store.h"

/*
 * es_segment_of_id: the segment of aggregate_id among segments: FNV-1a of
 * its bytes, modulo segments.  A hash of our own, never PostgreSQL's
 * (which may change between major versions): an aggregate must stay in its
 * segment for as long as the consumer is split the same way.
 */
int
es_segment_of_id(const char *aggregate_id, int segments)
{
	uint32		h = 2166136261u;
	const unsigned char *p;

	for (p = (const unsigned char *) aggregate_id; *p; p++)
	{
		h ^= *p;
		h *= 16777619u;
	}
	return (int) (h % (uint32) segments);
}

/*
 * es_segment_of(aggregate_id text, segments integer) returns integer
 *
 * The segment an aggregate's events go to when a consumer is split into
 * segments (0 .. segments - 1).
 */
PG_FUNCTION_INFO_V1(es_segment_of);
Datum
es_segment_of(PG_FUNCTION_ARGS)
{
	char	   *aggregate_id = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int32		segments = PG_GETARG_INT32(1);

	if (segments < 1 || segments > ES_MAX_SEGMENTS)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("segments must be between 1 and %d", ES_MAX_SEGMENTS)));
	PG_RETURN_INT32(es_segment_of_id(aggregate_id, segments));
}

static EsPlan fences_plan = {
	"SELECT segments, segment, checkpoint_tx, checkpoint_position,"
	"       log_seq, log_position, log_skip, log_skip_until FROM @extschema@.es_consumer_segments"
	" WHERE consumer OPERATOR(pg_catalog.=) $1 AND generation OPERATOR(pg_catalog.<) $2",
	2, {TEXTOID, INT4OID}
};

/* es_segment_load_fences: the fences of c's earlier generations, in the current context. */
void
es_segment_load_fences(Consumer *c)
{
	Datum		args[2];
	uint64		i;

	args[0] = CStringGetTextDatum(c->name);
	args[1] = Int32GetDatum(c->generation);
	if (SPI_execute_plan(es_plan(&fences_plan), args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the segments of consumer \"%s\"", c->name);
	c->nfences = (int) SPI_processed;
	c->fences = palloc(sizeof(EsFence) * Max(c->nfences, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		/* At least one (es_consumer_segments' CHECK, should it be gone): a modulo of it follows. */
		c->fences[i].segments = Max(DatumGetInt32(SPI_getbinval(row, desc, 1, &isnull)), 1);
		c->fences[i].segment = DatumGetInt32(SPI_getbinval(row, desc, 2, &isnull));
		es_commit_point_from_row(&c->fences[i].point, row, desc, 3, 5);
	}
	SPI_freetuptable(SPI_tuptable);
}

/* es_segment_fenced: whether an earlier generation handled ev already. */
bool
es_segment_fenced(const Consumer *c, const BatchEvent *ev)
{
	int			i;

	for (i = 0; i < c->nfences; i++)
	{
		const EsFence *f = &c->fences[i];

		if (es_segment_of_id(ev->aggregate_id, f->segments) == f->segment &&
			(FullTransactionIdPrecedes(ev->tx, f->point.tx) ||
			 (FullTransactionIdEquals(ev->tx, f->point.tx) && ev->position <= f->point.position) ||
			 es_read_skips(f->point.skip, f->point.nskip, ev->position)))
			return true;
	}
	return false;
}

/*
 * The lowest checkpoint of the consumer's current generation: its own when
 * unsplit, else its segments' lowest.
 */
static EsPlan low_water_plan = {
	"SELECT k.checkpoint_tx, k.checkpoint_position, c.generation"
	"  FROM @extschema@.es_consumers c, @extschema@.es_consumer_checkpoints k"
	" WHERE c.name OPERATOR(pg_catalog.=) $1 AND k.consumer OPERATOR(pg_catalog.=) c.name",
	1, {TEXTOID}
};

/*
 * The current generation's units that read the commit log: the consumer's
 * row (segment -1) when unsplit, else its segments'.
 */
static EsPlan units_in_log_plan = {
	"SELECT -1, c.checkpoint_tx, c.checkpoint_position, c.log_seq, c.log_position, c.log_skip, c.log_skip_until"
	"  FROM @extschema@.es_consumers c"
	" WHERE c.name OPERATOR(pg_catalog.=) $1 AND c.log_seq IS NOT NULL"
	"   AND NOT EXISTS (SELECT FROM @extschema@.es_consumer_segments s"
	"                    WHERE s.consumer OPERATOR(pg_catalog.=) c.name"
	"                      AND s.generation OPERATOR(pg_catalog.=) c.generation)"
	" UNION ALL "
	"SELECT s.segment, s.checkpoint_tx, s.checkpoint_position, s.log_seq, s.log_position, s.log_skip, s.log_skip_until"
	"  FROM @extschema@.es_consumer_segments s"
	"  JOIN @extschema@.es_consumers c ON c.name OPERATOR(pg_catalog.=) s.consumer"
	"   AND c.generation OPERATOR(pg_catalog.=) s.generation"
	" WHERE s.consumer OPERATOR(pg_catalog.=) $1 AND s.log_seq IS NOT NULL",
	1, {TEXTOID}
};

#define SET_POINT \
	" SET checkpoint_tx = $3, checkpoint_position = $4, log_seq = $5, log_position = $6," \
	"     log_skip = $7, log_skip_until = $8"

static EsPlan unit_out_of_log_plan = {
	"WITH unsplit AS ("
	"  UPDATE @extschema@.es_consumers" SET_POINT
	"   WHERE name OPERATOR(pg_catalog.=) $1 AND $2 OPERATOR(pg_catalog.<) 0)"
	" UPDATE @extschema@.es_consumer_segments s" SET_POINT
	"  FROM @extschema@.es_consumers c"
	" WHERE c.name OPERATOR(pg_catalog.=) $1 AND s.consumer OPERATOR(pg_catalog.=) c.name"
	"   AND s.generation OPERATOR(pg_catalog.=) c.generation AND s.segment OPERATOR(pg_catalog.=) $2",
	8, {TEXTOID, INT4OID, XID8OID, INT8OID, INT8OID, INT8OID, INT8ARRAYOID, XID8OID}
};

/*
 * The units of the current generation that read the log fall back to the
 * horizon first (commit_point.c): their checkpoints, with the events they
 * read above them as skip sets, are what the fences and the new start
 * need, exactly.
 */
static void
segment_units_out_of_log(const char *name)
{
	Datum		arg = CStringGetTextDatum(name);
	SPITupleTable *units;
	uint64		nunits;
	EsLogState	st;
	uint64		i;

	if (SPI_execute_plan(es_plan(&units_in_log_plan), &arg, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the checkpoints of consumer \"%s\"", name);
	units = SPI_tuptable;
	nunits = SPI_processed;
	if (nunits == 0)
		return;
	es_commit_log_state(&st, true);
	for (i = 0; i < nunits; i++)
	{
		EsCommitPoint p;
		Datum		args[8];
		char		nulls[8];
		bool		isnull;

		es_commit_point_from_row(&p, units->vals[i], units->tupdesc, 2, 4);
		es_commit_point_leave_log(&p, &st);
		memset(nulls, ' ', sizeof(nulls));
		args[0] = arg;
		args[1] = SPI_getbinval(units->vals[i], units->tupdesc, 1, &isnull);
		args[2] = FullTransactionIdGetDatum(p.tx);
		args[3] = Int64GetDatum(p.position);
		es_commit_point_log_args(&p, args + 4, nulls + 4);
		if (SPI_execute_plan(es_plan(&unit_out_of_log_plan), args, nulls, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not save the checkpoints of consumer \"%s\"", name);
	}
}

/*
 * The current generation's units become fences (their events count moves
 * to the consumer's row); fences that cannot matter any more (at or below
 * where the new generation starts, with no event handled above it) go.
 */
/* A fence at or below checkpoint ck (whose key is ck_tx) that handled nothing above it. */
#define PASSED(ck, ck_tx) \
	" AND ROW(checkpoint_tx, checkpoint_position) OPERATOR(pg_catalog.<=) " ck \
	" AND (log_skip_until IS NULL OR log_skip_until OPERATOR(pg_catalog.<) " ck_tx ")"

static EsPlan retire_plan = {
	"WITH old AS ("
	"  SELECT COALESCE(pg_catalog.sum(events_processed), 0)::pg_catalog.int8 AS events FROM @extschema@.es_consumer_segments"
	"   WHERE consumer OPERATOR(pg_catalog.=) $1 AND generation OPERATOR(pg_catalog.=) $4),"
	" gone AS ("
	"  DELETE FROM @extschema@.es_consumer_segments"
	"   WHERE consumer OPERATOR(pg_catalog.=) $1" PASSED("ROW($2, $3)", "$2") "),"
	" fenced AS ("
	"  UPDATE @extschema@.es_consumer_segments SET events_processed = 0, retry_event_id = NULL,"
	"         retry_attempts = 0, retry_first_failed_at = NULL, retry_at = NULL"
	"   WHERE consumer OPERATOR(pg_catalog.=) $1 AND generation OPERATOR(pg_catalog.=) $4"
	"     AND NOT (true" PASSED("ROW($2, $3)", "$2") "))"
	" UPDATE @extschema@.es_consumers"
	"    SET generation = $4 OPERATOR(pg_catalog.+) 1,"
	"        events_processed = events_processed OPERATOR(pg_catalog.+) (SELECT events FROM old),"
	"        checkpoint_tx = $2, checkpoint_position = $3, retry_event_id = NULL, retry_attempts = 0,"
	"        retry_first_failed_at = NULL, retry_at = NULL,"
	"        log_seq = NULL, log_position = NULL, log_skip = NULL, log_skip_until = NULL"
	"  WHERE name OPERATOR(pg_catalog.=) $1",
	4, {TEXTOID, XID8OID, INT8OID, INT4OID}
};

/*
 * An unsplit consumer's skip set (the events it handled above its
 * checkpoint) becomes a fence of one segment, which every aggregate falls
 * in: the new units start at its checkpoint, below those events.
 */
static EsPlan unsplit_fence_plan = {
	"INSERT INTO @extschema@.es_consumer_segments"
	" (consumer, generation, segments, segment, checkpoint_tx, checkpoint_position, log_skip, log_skip_until)"
	" SELECT name, generation, 1, 0, checkpoint_tx, checkpoint_position, log_skip, log_skip_until"
	"   FROM @extschema@.es_consumers"
	"  WHERE name OPERATOR(pg_catalog.=) $1 AND log_skip IS NOT NULL",
	1, {TEXTOID}
};

static EsPlan new_units_plan = {
	"INSERT INTO @extschema@.es_consumer_segments"
	" (consumer, generation, segments, segment, checkpoint_tx, checkpoint_position)"
	" SELECT $1, $2, $3, k, $4, $5 FROM pg_catalog.generate_series(0, $3 OPERATOR(pg_catalog.-) 1) k",
	5, {TEXTOID, INT4OID, INT4OID, XID8OID, INT8OID}
};

/*
 * es_segment_split: split consumer name, now in segments from (1: unsplit),
 * into segments to, from the lowest checkpoint of the current units (see the
 * file header).  The caller holds the consumer's row FOR UPDATE and has
 * registered the new number already.  Needs SPI.
 */
void
es_segment_split(const char *name, int from, int to)
{
	Datum		args[5];
	bool		isnull;
	FullTransactionId start_tx;
	int64		start_position;
	int32		generation;

	if (from == to)
		return;
	segment_units_out_of_log(name);
	args[0] = CStringGetTextDatum(name);
	if (SPI_execute_plan(es_plan(&low_water_plan), args, NULL, false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not read the checkpoint of consumer \"%s\"", name);
	start_tx = DatumGetFullTransactionId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	start_position = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	generation = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	SPI_freetuptable(SPI_tuptable);

	args[1] = FullTransactionIdGetDatum(start_tx);
	args[2] = Int64GetDatum(start_position);
	args[3] = Int32GetDatum(generation);
	if (from == 1 && SPI_execute_plan(es_plan(&unsplit_fence_plan), args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not split consumer \"%s\"", name);
	if (SPI_execute_plan(es_plan(&retire_plan), args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not split consumer \"%s\"", name);
	if (to > 1)
	{
		args[1] = Int32GetDatum(generation + 1);
		args[2] = Int32GetDatum(to);
		args[3] = FullTransactionIdGetDatum(start_tx);
		args[4] = Int64GetDatum(start_position);
		if (SPI_execute_plan(es_plan(&new_units_plan), args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not split consumer \"%s\"", name);
	}
}

/* Fences every unit of the current generation has passed. */
static EsPlan collect_plan = {
	"DELETE FROM @extschema@.es_consumer_segments f"
	" USING @extschema@.es_consumers c, @extschema@.es_consumer_checkpoints k"
	" WHERE f.consumer OPERATOR(pg_catalog.=) c.name AND k.consumer OPERATOR(pg_catalog.=) c.name"
	"   AND f.generation OPERATOR(pg_catalog.<) c.generation"
	"   AND ROW(f.checkpoint_tx, f.checkpoint_position)"
	"       OPERATOR(pg_catalog.<=) ROW(k.checkpoint_tx, k.checkpoint_position)"
	"   AND (f.log_skip_until IS NULL OR f.log_skip_until OPERATOR(pg_catalog.<) k.checkpoint_tx)",
	0, {InvalidOid}
};

/* es_segment_collect: drop the fences nothing needs any more.  Needs SPI. */
void
es_segment_collect(void)
{
	if (SPI_execute_plan(es_plan(&collect_plan), NULL, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not drop the consumers' old segments");
}
