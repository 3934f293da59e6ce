/*-------------------------------------------------------------------------
 *
 * commit_point.c
 *	  Where a unit of delivery is in commit order: below the commit
 *	  horizon, or in the commit log; and how it switches between the two
 *	  without losing or repeating an event.
 *
 * Below the horizon a unit reads in (tx_id, position) order after its
 * checkpoint, and an appending transaction left open holds every later
 * event back.  In the commit log (with wal_level = logical, sequencer.c) it
 * reads transactions in the order they committed, and nothing open holds
 * it back.  A unit reads the log while the log is live, and falls back to
 * the horizon when it is not (the log switched off, wal_level lowered, the
 * slot lost until its tail is numbered again).
 *
 * The horizon checkpoint (tx, position) stays meaningful in both modes:
 * every event at or below it was handled.  So every reader of checkpoints
 * (splits and their fences, a rebuild, es_stats) keeps one coordinate
 * system, and a unit in the log passes over the events at or below it.
 *
 *	- Into the log, at (T, P): from the first row with an event keyed T or
 *	  above (es_commit_log_start); every row before has only smaller keys,
 *	  all at or below the checkpoint.  The events of the later rows at or
 *	  below it are passed over.  Exact.
 *	- In the log, the checkpoint follows the sequencer: it publishes
 *	  complete_below H with complete_seq S, "every committed event keyed
 *	  below H is in a row up to S"; once the unit has read row S whole, it
 *	  handled them all, and its checkpoint moves to (H, 0).
 *	- Out of the log, at (seq, position): the checkpoint moves up as above,
 *	  and the events read in the log above it are kept as a skip set (their
 *	  positions, with the largest of their keys): every event handled is at
 *	  or below the checkpoint or in the set, every other one is above it and
 *	  is read below the horizon.  Exact, with no drain and no pause.  The
 *	  set is about the events committed in the last sequencer pass, and
 *	  those of appending transactions open when H was taken; it goes once
 *	  the checkpoint passes its largest key.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "read/commit_point.h"

#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/xid8.h"

#include "core/guc.h"
#include "core/store.h"

static EsPlan state_plan = {
	"SELECT s.tail_snapshot IS NOT NULL, s.complete_below, s.complete_seq"
	"  FROM @extschema@.es_commit_log_state s",
	0, {InvalidOid}
};

/*
 * es_commit_log_state: the log's state now, for a unit in the log or not
 * (in_log).  Live: switched on, with wal_level = logical, its tail
 * numbered (not while a lost slot is made again) and its completeness
 * published once.  Not read when it cannot be live and the unit is not in
 * it (nothing to follow).  Needs SPI.
 */
void
es_commit_log_state(EsLogState *st, bool in_log)
{
	bool		possible = es_commit_log && XLogLogicalInfoActive() && !RecoveryInProgress();
	bool		isnull;
	bool		tail_numbered = false;
	Datum		d;

	memset(st, 0, sizeof(*st));
	if (!possible && !in_log)
		return;
	if (SPI_execute_plan(es_plan(&state_plan), NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the state of the commit log");
	if (SPI_processed == 1)
	{
		HeapTuple	row = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		tail_numbered = DatumGetBool(SPI_getbinval(row, desc, 1, &isnull));
		d = SPI_getbinval(row, desc, 2, &isnull);
		if (!isnull)
		{
			st->complete = true;
			st->complete_below = DatumGetFullTransactionId(d);
			d = SPI_getbinval(row, desc, 3, &isnull);
			st->complete_seq = isnull ? 0 : DatumGetInt64(d);
		}
	}
	st->live = possible && tail_numbered && st->complete;
}

/*
 * Where a reader at the horizon checkpoint (after_tx, position) goes on in
 * the log: the first row whose largest key reaches after_tx, read whole
 * (the events at or below the checkpoint passed over); past the last row
 * when none does.
 */
static EsPlan log_start_plan = {
	"SELECT COALESCE((SELECT pg_catalog.min(l.seq) FROM @extschema@.es_commit_log l"
	"                  WHERE l.max_key OPERATOR(pg_catalog.>=) $1),"
	"                 (SELECT COALESCE(pg_catalog.max(l.seq), 0) OPERATOR(pg_catalog.+) 1"
	"                    FROM @extschema@.es_commit_log l))",
	1, {XID8OID}
};

/* es_commit_log_start: that row.  Needs SPI. */
int64
es_commit_log_start(FullTransactionId after_tx)
{
	Datum		arg = FullTransactionIdGetDatum(after_tx);
	bool		isnull;

	if (SPI_execute_plan(es_plan(&log_start_plan), &arg, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not read the commit log");
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/* p's skip set from a sorted bigint[] of positions, and the largest of their keys. */
static void
commit_point_take_skip(EsCommitPoint *p, Datum positions, Datum until)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			i;

	deconstruct_array(DatumGetArrayTypeP(positions), INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &elems, &nulls, &n);
	p->skip = palloc(sizeof(int64) * Max(n, 1));
	p->nskip = 0;
	for (i = 0; i < n; i++)
		if (!nulls[i])
			p->skip[p->nskip++] = DatumGetInt64(elems[i]);
	p->skip_until = DatumGetFullTransactionId(until);
}

/*
 * es_commit_point_from_row: p from a unit's row: (checkpoint_tx,
 * checkpoint_position) at columns tx_att and after, (log_seq, log_position,
 * log_skip, log_skip_until) at log_att and after.  In the current memory
 * context.
 */
void
es_commit_point_from_row(EsCommitPoint *p, HeapTuple row, TupleDesc desc, int tx_att, int log_att)
{
	bool		isnull;
	Datum		d;

	memset(p, 0, sizeof(*p));
	p->tx = DatumGetFullTransactionId(SPI_getbinval(row, desc, tx_att, &isnull));
	p->position = DatumGetInt64(SPI_getbinval(row, desc, tx_att + 1, &isnull));
	d = SPI_getbinval(row, desc, log_att, &isnull);
	p->in_log = !isnull;
	if (p->in_log)
	{
		p->log_seq = DatumGetInt64(d);
		d = SPI_getbinval(row, desc, log_att + 1, &isnull);
		p->log_position = isnull ? 0 : DatumGetInt64(d);
	}
	d = SPI_getbinval(row, desc, log_att + 2, &isnull);
	if (!isnull)
		commit_point_take_skip(p, d, SPI_getbinval(row, desc, log_att + 3, &isnull));
}

/*
 * es_commit_point_log_args: the values of (log_seq, log_position, log_skip,
 * log_skip_until) for a plan that saves p (types int8, int8, int8[], xid8).
 */
void
es_commit_point_log_args(const EsCommitPoint *p, Datum *args, char *nulls)
{
	int			i;

	for (i = 0; i < ES_COMMIT_POINT_LOG_COLUMNS; i++)
		nulls[i] = 'n';
	if (p->in_log)
	{
		args[0] = Int64GetDatum(p->log_seq);
		args[1] = Int64GetDatum(p->log_position);
		nulls[0] = nulls[1] = ' ';
	}
	if (p->nskip > 0)
	{
		Datum	   *elems = palloc(sizeof(Datum) * p->nskip);

		for (i = 0; i < p->nskip; i++)
			elems[i] = Int64GetDatum(p->skip[i]);
		args[2] = PointerGetDatum(construct_array(elems, p->nskip, INT8OID, sizeof(int64), FLOAT8PASSBYVAL,
												  TYPALIGN_DOUBLE));
		args[3] = FullTransactionIdGetDatum(p->skip_until);
		nulls[2] = nulls[3] = ' ';
	}
}

/* Whether the unit has read row seq of the log whole, being at position in it. */
static EsPlan row_read_plan = {
	"SELECT pg_catalog.max(p) OPERATOR(pg_catalog.<=) $2"
	"  FROM @extschema@.es_commit_log l, pg_catalog.unnest(l.positions) p"
	" WHERE l.seq OPERATOR(pg_catalog.=) $1",
	2, {INT8OID, INT8OID}
};

static bool
commit_point_row_read(int64 seq, int64 position)
{
	Datum		args[2];
	bool		isnull;
	bool		read;

	args[0] = Int64GetDatum(seq);
	args[1] = Int64GetDatum(position);
	if (SPI_execute_plan(es_plan(&row_read_plan), args, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read the commit log");
	read = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	return read && !isnull;
}

/*
 * es_commit_point_advance: after a unit saved where it is.  In the log, its
 * checkpoint moves up to the sequencer's complete_below once it has read
 * every row up to complete_seq; in either mode the skip set goes once the
 * checkpoint passes it.  Needs SPI.
 */
void
es_commit_point_advance(EsCommitPoint *p, const EsLogState *st)
{
	if (p->in_log && st->complete && FullTransactionIdFollows(st->complete_below, p->tx) &&
		(st->complete_seq < p->log_seq ||
		 (st->complete_seq == p->log_seq && commit_point_row_read(p->log_seq, p->log_position))))
	{
		p->tx = st->complete_below;
		p->position = 0;
	}
	if (p->nskip > 0 && FullTransactionIdFollows(p->tx, p->skip_until))
	{
		p->skip = NULL;
		p->nskip = 0;
	}
}

/*
 * The events a unit read in the log above its checkpoint: those of the
 * rows from the first with a key above it, up to where it is, with their
 * largest key; and the unit's skip set before.
 */
static EsPlan read_above_plan = {
	"WITH k AS ("
	"  SELECT e.position, e.tx_id"
	"    FROM @extschema@.es_commit_log l"
	"   CROSS JOIN LATERAL pg_catalog.unnest(l.positions) AS u(position)"
	"    JOIN @extschema@.es_events e ON e.position OPERATOR(pg_catalog.=) u.position"
	"   WHERE l.seq OPERATOR(pg_catalog.>=) (SELECT pg_catalog.min(m.seq) FROM @extschema@.es_commit_log m"
	"                                         WHERE m.max_key OPERATOR(pg_catalog.>=) $1)"
	"     AND l.seq OPERATOR(pg_catalog.<=) $3"
	"     AND (l.seq OPERATOR(pg_catalog.<) $3 OR u.position OPERATOR(pg_catalog.<=) $4)"
	"     AND ROW(e.tx_id, e.position) OPERATOR(pg_catalog.>) ROW($1, $2)"
	"  UNION ALL"
	"  SELECT o.position, $6 FROM pg_catalog.unnest($5) AS o(position))"
	" SELECT pg_catalog.array_agg(DISTINCT k.position ORDER BY k.position), pg_catalog.max(k.tx_id) FROM k",
	6, {XID8OID, INT8OID, INT8OID, INT8OID, INT8ARRAYOID, XID8OID}
};

/*
 * es_commit_point_leave_log: p falls back to the horizon, where it is (see
 * the file header).  Needs SPI.
 */
void
es_commit_point_leave_log(EsCommitPoint *p, const EsLogState *st)
{
	Datum		args[6];
	char		nulls[6];
	Datum		log_args[ES_COMMIT_POINT_LOG_COLUMNS];
	char		log_nulls[ES_COMMIT_POINT_LOG_COLUMNS];
	HeapTuple	row;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;

	if (!p->in_log)
		return;
	es_commit_point_advance(p, st);
	es_commit_point_log_args(p, log_args, log_nulls);
	memset(nulls, ' ', sizeof(nulls));
	args[0] = FullTransactionIdGetDatum(p->tx);
	args[1] = Int64GetDatum(p->position);
	args[2] = Int64GetDatum(p->log_seq);
	args[3] = Int64GetDatum(p->log_position);
	args[4] = log_args[2];
	nulls[4] = log_nulls[2];
	args[5] = log_args[3];
	nulls[5] = log_nulls[3];
	if (SPI_execute_plan(es_plan(&read_above_plan), args, nulls, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read the commit log");
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	p->in_log = false;
	p->log_seq = p->log_position = 0;
	p->skip = NULL;
	p->nskip = 0;
	d = SPI_getbinval(row, desc, 1, &isnull);
	if (!isnull)
		commit_point_take_skip(p, d, SPI_getbinval(row, desc, 2, &isnull));
}

/* Why the log is not live, for the message of a unit that falls back. */
static const char *
commit_log_not_live(void)
{
	if (!es_commit_log)
		return "The commit log is switched off (ultracore_es.commit_log)";
	if (!XLogLogicalInfoActive())
		return "The server's wal_level is below logical";
	return "The commit log's slot is being made again, its tail not numbered yet";
}

/*
 * es_commit_point_follow: p, the point of consumer name (of its segment
 * segment of segments when split), in the mode the log's state asks for:
 * into the log when it is live, out of it when not, each switch logged.
 * Needs SPI.
 */
void
es_commit_point_follow(EsCommitPoint *p, const EsLogState *st, const char *name, int segment, int segments)
{
	char		unit[NAMEDATALEN + 64];

	if (st->live == p->in_log)
		return;
	if (segments > 1)
		snprintf(unit, sizeof(unit), "\"%s\" (segment %d of %d)", name, segment, segments);
	else
		snprintf(unit, sizeof(unit), "\"%s\"", name);
	if (st->live)
	{
		p->log_seq = es_commit_log_start(p->tx);
		p->log_position = 0;
		p->in_log = true;
		ereport(LOG,
				(errmsg("ultracore_es: %s reads the commit log, from row " INT64_FORMAT, unit, p->log_seq),
				 errdetail("Its checkpoint below the commit horizon was (%llu, " INT64_FORMAT ").",
						   (unsigned long long) U64FromFullTransactionId(p->tx), p->position)));
	}
	else
	{
		int64		log_seq = p->log_seq;

		es_commit_point_leave_log(p, st);
		ereport(LOG,
				(errmsg("ultracore_es: %s falls back to reading below the commit horizon", unit),
				 errdetail("%s.  It had read the log up to row " INT64_FORMAT
						   "; its checkpoint is (%llu, " INT64_FORMAT "), with %d events above it read already.",
						   commit_log_not_live(), log_seq,
						   (unsigned long long) U64FromFullTransactionId(p->tx), p->position, p->nskip)));
	}
}

/*
 * es_commit_point_passed: the unit has handled every event up to the one
 * at (tx, position), in row seq of the log when it read it there.
 */
void
es_commit_point_passed(EsCommitPoint *p, FullTransactionId tx, int64 position, int64 seq)
{
	if (p->in_log)
	{
		p->log_seq = seq;
		p->log_position = position;
	}
	else
	{
		p->tx = tx;
		p->position = position;
	}
}

/* es_commit_point_read: r reads on from p, in p's mode. */
void
es_commit_point_read(const EsCommitPoint *p, EsCommitRead *r)
{
	r->after_tx = p->tx;
	r->after_position = p->position;
	r->skip = p->skip;
	r->nskip = p->nskip;
	r->in_log = p->in_log;
	r->after_seq = p->log_seq;
	r->after_seq_position = p->log_position;
}
