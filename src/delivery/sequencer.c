/*-------------------------------------------------------------------------
 *
 * sequencer.c
 *	  The sequencer: a worker service that numbers the store's committed
 *	  transactions in commit order, from logical decoding, into
 *	  es_commit_log, which es_read_log pages.
 *
 * With wal_level = logical (and ultracore_es.commit_log on), the store
 * keeps a logical replication slot, ultracore_es_<database oid>, read
 * through the extension's own output plugin (decoder.c): one line per
 * transaction that appended, at its commit.  The process holds the slot
 * and one decoding of it for its life; each pass decodes the WAL flushed
 * since the last, adds a row per transaction to es_commit_log (seq = the
 * last one plus one: one writer, so the numbers have no gap) in one
 * statement, commits, and only then confirms the slot past it.  A crash in
 * between decodes the same transactions again; each is logged once (a
 * commit not after the last one numbered is skipped).  A
 * transaction decoded while its backend has not yet left the proc array
 * (its commit is in the WAL, not yet visible) is waited for, so that a
 * reader that sees its row also sees its events.
 *
 * The events committed before the slot existed (a store that had events
 * before wal_level became logical, a slot dropped or lost, a promoted
 * standby, whose slots did not follow it) are numbered once, as its tail,
 * when the slot is made: every event not in the log yet, in commit-horizon
 * order, a row per transaction key, in one statement that also records
 * its snapshot; the transactions that snapshot saw are then skipped when
 * the slot decodes them again.  Nothing is skipped or numbered twice: the
 * tail is what the snapshot saw, the slot what committed after its
 * consistent point, which was before the snapshot.
 *
 * Completeness.  Units of delivery that read the log keep a horizon
 * checkpoint too (commit_point.c), which follows what the sequencer
 * publishes in es_commit_log_state: complete_below H and complete_seq S,
 * "every committed event keyed below H is in a row up to S".  A pass
 * takes H (the commit horizon: every event keyed below it was committed,
 * or never will be), then the WAL insert position L; every such commit is
 * before L.  Once a later pass has decoded past L and numbered what it
 * decoded, it publishes H with the last number, in the same transaction.
 *
 * The cost: the slot keeps the WAL it has not passed (a stopped sequencer
 * makes it grow; max_slot_wal_keep_size bounds it, after which the slot is
 * invalidated and made again, with a tail), and logical decoding sees only
 * flushed WAL (with synchronous_commit off, up to wal_writer_delay late).
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/transam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlogutils.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "replication/decode.h"
#include "replication/logical.h"
#include "replication/slot.h"
#include "storage/ipc.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/xid8.h"

#include "core/guc.h"
#include "core/horizon.h"
#include "core/step.h"
#include "delivery/sequencer.h"
#include "delivery/worker.h"

/* Transactions taken from the slot per pass, at most. */
#define SEQUENCER_BATCH		10000

static EsPlan slot_exists_plan = {
	"SELECT s.wal_status IS DISTINCT FROM 'lost'"
	"  FROM pg_catalog.pg_replication_slots s WHERE s.slot_name OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}
};

static EsPlan state_plan = {
	"SELECT s.tail_snapshot IS NOT NULL FROM @extschema@.es_commit_log_state s",
	0, {InvalidOid}
};

/* Before a slot is made: its tail is not numbered yet. */
static EsPlan state_reset_plan = {
	"UPDATE @extschema@.es_commit_log_state SET slot_name = $1, tail_snapshot = NULL, slot_created_at = NULL",
	1, {TEXTOID}
};

static EsPlan slot_drop_plan = {
	"SELECT pg_catalog.pg_drop_replication_slot(s.slot_name) FROM pg_catalog.pg_replication_slots s"
	" WHERE s.slot_name OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}
};

static EsPlan slot_create_plan = {
	"SELECT pg_catalog.pg_create_logical_replication_slot($1, 'ultracore_es')",
	1, {TEXTOID}
};

/*
 * The tail: every event not in the log, a row per transaction key, and the
 * snapshot it was read with, in one statement (one snapshot).  An anti
 * join: NOT IN over a log larger than work_mem is not hashed, and compared
 * each event with every logged position.
 */
static EsPlan tail_plan = {
	"WITH last AS (SELECT COALESCE(pg_catalog.max(l.seq), 0) AS seq FROM @extschema@.es_commit_log l),"
	" logged AS (SELECT pg_catalog.unnest(l.positions) AS position FROM @extschema@.es_commit_log l),"
	" tail AS (SELECT e.tx_id, pg_catalog.array_agg(e.position ORDER BY e.position) AS positions,"
	"                 pg_catalog.max(e.recorded_at) AS committed_at"
	"            FROM @extschema@.es_events e"
	"           WHERE NOT EXISTS (SELECT FROM logged g WHERE g.position OPERATOR(pg_catalog.=) e.position)"
	"           GROUP BY e.tx_id),"
	" numbered AS (INSERT INTO @extschema@.es_commit_log (seq, xid, max_key, positions, commit_lsn, committed_at)"
	"              SELECT last.seq OPERATOR(pg_catalog.+) pg_catalog.row_number() OVER (ORDER BY t.tx_id),"
	"                     NULL, t.tx_id, t.positions, NULL, t.committed_at"
	"                FROM tail t, last"
	"              RETURNING pg_catalog.cardinality(positions) AS events)"
	" UPDATE @extschema@.es_commit_log_state"
	"    SET tail_snapshot = pg_catalog.pg_current_snapshot(), slot_created_at = pg_catalog.now(),"
	"        tail_events = (SELECT COALESCE(pg_catalog.sum(events), 0) FROM numbered),"
	"        tail_seq = (SELECT last.seq FROM last) OPERATOR(pg_catalog.+) (SELECT pg_catalog.count(*) FROM numbered)",
	0, {InvalidOid}
};

/*
 * The transactions of a pass, numbered in one statement, from arrays in
 * decoding order: each one's xid, the end of its commit record, its commit
 * time, its slice of the flat array of positions ($5, from $4 on, $6 of
 * them), and its events' largest key ($7).  The numbers go on from the
 * log's last one, in decoding order: no gap.  Skipped: a transaction the tail's snapshot saw (the tail has it),
 * and one whose commit is not after the last this slot numbered: decoded
 * again after a crash between numbering and confirming, since the slot
 * decodes commits in the order of their records.  Only this slot's rows
 * count (past the tail): the rows before it may come from another cluster
 * (a restored dump) or from before a promotion, whose WAL positions are
 * not this one's.  The last number, and where this slot's numbers end,
 * are read once, before the statement inserts (MATERIALIZED: inlined, it was read again for each
 * row, past every row the statement had inserted so far).
 */
static EsPlan log_plan = {
	"WITH s AS MATERIALIZED ("
	"  SELECT st.tail_snapshot,"
	"         (SELECT COALESCE(pg_catalog.max(l.seq), 0) FROM @extschema@.es_commit_log l) AS last_seq,"
	"         COALESCE((SELECT l.commit_lsn FROM @extschema@.es_commit_log l"
	"                    WHERE l.seq OPERATOR(pg_catalog.>) st.tail_seq ORDER BY l.seq DESC LIMIT 1),"
	"                  '0/0'::pg_catalog.pg_lsn) AS numbered_to"
	"    FROM @extschema@.es_commit_log_state st)"
	" INSERT INTO @extschema@.es_commit_log (seq, xid, max_key, positions, commit_lsn, committed_at)"
	" SELECT s.last_seq OPERATOR(pg_catalog.+) pg_catalog.row_number() OVER (ORDER BY d.ord), d.xid, d.max_key,"
	"        $5[d.first : d.first OPERATOR(pg_catalog.+) d.n OPERATOR(pg_catalog.-) 1], d.lsn, d.committed_at"
	"   FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3),"
	"                   pg_catalog.unnest($4), pg_catalog.unnest($6), pg_catalog.unnest($7))"
	"        WITH ORDINALITY AS d(xid, lsn, committed_at, first, n, max_key, ord), s"
	"  WHERE d.lsn OPERATOR(pg_catalog.>) s.numbered_to"
	"    AND NOT pg_catalog.pg_visible_in_snapshot(d.xid, s.tail_snapshot)",
	7, {XID8ARRAYOID, PG_LSNARRAYOID, TIMESTAMPTZARRAYOID, INT4ARRAYOID, INT8ARRAYOID, INT4ARRAYOID,
	XID8ARRAYOID}
};

/*
 * What the sequencer publishes in es_commit_log_state (see the file
 * header): complete_below $1, complete_seq the log's last number.
 */
static EsPlan complete_plan = {
	"UPDATE @extschema@.es_commit_log_state"
	"   SET complete_below = $1,"
	"       complete_seq = (SELECT COALESCE(pg_catalog.max(l.seq), 0) FROM @extschema@.es_commit_log l)",
	1, {XID8OID}
};

/*
 * The commit horizon taken by a pass, and the WAL insert position after
 * it, until the decoding passes that position (pending); the last one
 * published; and whether a pass with nothing decoded should still publish.
 */
static bool pending = false;
static FullTransactionId pending_below;
static XLogRecPtr pending_lsn;
static TimestampTz pending_at;
static bool publish_wanted = true;
static bool numbered_since_taken = false;
static FullTransactionId published_below = {0};

/*
 * Under load the sequencer passes at every commit: it publishes at most
 * once per PUBLISH_MS (the horizon and the update cost about as much as
 * numbering a transaction), and sleeps no longer than that while a
 * publication is wanted.
 */
#define PUBLISH_MS	10

/* Whether the slot and its tail are in place (this process made sure). */
static bool slot_ready = false;

/*
 * The decoding of the slot, held from the first pass to the process's end:
 * each pass reads on from where the last one stopped, where a peek at the
 * slot decoded again from its restart point every time (which a long
 * transaction holds back, so each pass read more WAL than the last).
 */
static LogicalDecodingContext *decoding = NULL;

/* The transactions decoded and not numbered yet (the plugin's lines), in lines_cxt. */
typedef struct Decoded
{
	XLogRecPtr	lsn;			/* the end of its commit record */
	char	   *line;
} Decoded;

static MemoryContext lines_cxt = NULL;
static List *decoded = NIL;

/* The store's slot: one per database, since slots are the cluster's. */
static char *
sequencer_slot_name(void)
{
	return psprintf("ultracore_es_%u", MyDatabaseId);
}

static int
sequencer_wanted(bool kafka_database)
{
	return es_commit_log && XLogLogicalInfoActive() ? 1 : 0;
}

static bool
sequencer_bool(EsPlan *plan, Datum *args)
{
	bool		isnull;

	if (SPI_execute_plan(es_plan(plan), args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the state of the commit log");
	if (SPI_processed == 0)
		return false;
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) && !isnull;
}

/*
 * First step of a process: is the slot there, with its tail numbered?  If
 * not, the tail is marked undone and the slot made (dropped first if it
 * exists without its tail: a crash between the two); its consistent point
 * waits for the transactions running now, appending or not.
 */
static void
sequencer_slot_step(EsStore *s, void *arg)
{
	bool	   *made = (bool *) arg;
	Datum		name = CStringGetTextDatum(sequencer_slot_name());

	*made = false;
	if (sequencer_bool(&slot_exists_plan, &name) && sequencer_bool(&state_plan, NULL))
		return;
	if (SPI_execute_plan(es_plan(&state_reset_plan), &name, NULL, false, 0) != SPI_OK_UPDATE ||
		SPI_execute_plan(es_plan(&slot_drop_plan), &name, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not prepare the commit log's slot");
	*made = true;
}

/* The slot itself, in a transaction that has written nothing (which slot creation demands). */
static void
sequencer_create_step(EsStore *s, void *arg)
{
	Datum		name = CStringGetTextDatum(sequencer_slot_name());

	if (SPI_execute_plan(es_plan(&slot_create_plan), &name, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not create the commit log's slot");
	ereport(LOG,
			(errmsg("ultracore_es sequencer: created logical replication slot \"%s\"", TextDatumGetCString(name))));
}

static void
sequencer_tail_step(EsStore *s, void *arg)
{
	if (SPI_execute_plan(es_plan(&tail_plan), NULL, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not number the commit log's tail");
}

/*
 * Parse the plugin's line: xid8, commit time, largest key, then the
 * positions, added to *positions (of room *size, *npositions used);
 * returns how many.
 */
static int32
sequencer_parse(const char *line, FullTransactionId *xid, TimestampTz *committed_at, FullTransactionId *max_key,
				Datum **positions, int *npositions, int *size)
{
	const char *p = line;
	char	   *end;
	int32		n = 0;

	*xid = FullTransactionIdFromU64(strtou64(p, &end, 10));
	if (end == p || *end != ' ')
		goto bad;
	p = end + 1;
	*committed_at = (TimestampTz) strtoi64(p, &end, 10);
	if (end == p || *end != ' ')
		goto bad;
	p = end + 1;
	*max_key = FullTransactionIdFromU64(strtou64(p, &end, 10));
	if (end == p || *end != ' ' || end[1] != '{')
		goto bad;
	p = end + 2;
	for (;;)
	{
		int64		position = strtoi64(p, &end, 10);

		if (end == p || (*end != ',' && *end != '}'))
			goto bad;
		if (*npositions == *size)
		{
			*size *= 2;
			*positions = repalloc(*positions, sizeof(Datum) * *size);
		}
		(*positions)[(*npositions)++] = Int64GetDatum(position);
		n++;
		if (*end == '}')
			return n;
		p = end + 1;
	}
bad:
	elog(ERROR, "unexpected line from the ultracore_es output plugin: \"%s\"", line);
}

/* The output plugin's writes: each line kept, with where its commit ends. */
static void
sequencer_prepare_write(LogicalDecodingContext *ctx, XLogRecPtr lsn, TransactionId xid, bool last_write)
{
	resetStringInfo(ctx->out);
}

static void
sequencer_write(LogicalDecodingContext *ctx, XLogRecPtr lsn, TransactionId xid, bool last_write)
{
	MemoryContext old = MemoryContextSwitchTo(lines_cxt);
	Decoded    *d = palloc(sizeof(Decoded));

	d->lsn = lsn;
	d->line = pstrdup(ctx->out->data);
	decoded = lappend(decoded, d);
	MemoryContextSwitchTo(old);
}

/*
 * The decoding builds cache entries (relations, their catalog rows) under
 * historic snapshots, as of the WAL it reads.  They are the current ones
 * unless the catalog changed after that point: then the entries the steps
 * use may be stale until the decoding passes the change and replays its
 * invalidations.  The caches are emptied after a pass (as
 * pg_logical_slot_get_changes does after each call) while such a change
 * may be ahead of the decoding: one committed before this process started,
 * or one whose relation cache invalidation (every change to a relation's
 * definition sends one) arrived since, up to the WAL written when it did.
 * Emptying them at every pass instead rebuilt the relations and replanned
 * the statements of the next, half the sequencer's time.
 */
static XLogRecPtr caches_suspect_until = InvalidXLogRecPtr;
static bool caches_emptying = false;

static void
sequencer_relation_changed(Datum arg, Oid relid)
{
	if (!caches_emptying)
		caches_suspect_until = GetXLogInsertRecPtr();
}

/*
 * PROC_IN_LOGICAL_DECODING, which CreateDecodingContext sets for the
 * process, makes the snapshots of other backends pass over it entirely
 * (GetSnapshotData skips such processes: the slot holds their xmin back
 * instead), its transaction id included.  A reader of es_commit_log that
 * took a snapshot while a step of the sequencer was inserting rows took
 * that transaction for ended; not finding it committed, it marked the rows
 * aborted for good (hint bits), and numbered transactions vanished from
 * the log.  The flag is on only while the process decodes, outside any
 * transaction; its steps run without it, as any backend's.
 */
static void
sequencer_decoding_flag(bool on)
{
	LWLockAcquire(ProcArrayLock, LW_EXCLUSIVE);
	if (on)
		MyProc->statusFlags |= PROC_IN_LOGICAL_DECODING;
	else
		MyProc->statusFlags &= ~PROC_IN_LOGICAL_DECODING;
	ProcGlobal->statusFlags[MyProc->pgxactoff] = MyProc->statusFlags;
	LWLockRelease(ProcArrayLock);
}

/*
 * Decode the WAL flushed since the last pass, up to SEQUENCER_BATCH
 * transactions; true when it stopped for the batch's size.  Outside any
 * transaction, as a walsender does: the reorder buffer runs each decoded
 * transaction's replay in one of its own.  An error ends the process, and
 * its slot with it; the next one decodes from the slot's confirmed point.
 */
static bool
sequencer_decode(void)
{
	XLogRecPtr	end_of_wal = GetFlushRecPtr(NULL);
	MemoryContext old;
	bool		replayed = false;

	if (decoding == NULL)
	{
		if (lines_cxt == NULL)
			lines_cxt = AllocSetContextCreate(TopMemoryContext, "ultracore_es sequencer lines", ALLOCSET_DEFAULT_SIZES);
		ReplicationSlotAcquire(sequencer_slot_name(), true);
		old = MemoryContextSwitchTo(TopMemoryContext);
		decoding = CreateDecodingContext(InvalidXLogRecPtr, NIL, false,
										 XL_ROUTINE(.page_read = read_local_xlog_page,
													.segment_open = wal_segment_open,
													.segment_close = wal_segment_close),
										 sequencer_prepare_write, sequencer_write, NULL);
		MemoryContextSwitchTo(old);
		XLogBeginRead(decoding->reader, MyReplicationSlot->data.restart_lsn);
		caches_suspect_until = GetXLogInsertRecPtr();
	}
	else
		sequencer_decoding_flag(true);
	/*
	 * In the decoding's memory: the reader allocates its decode buffer at
	 * its first read, in the current context, and keeps it (the pass's
	 * context is emptied after each pass).
	 */
	old = MemoryContextSwitchTo(decoding->context);
	while (decoding->reader->EndRecPtr < end_of_wal && list_length(decoded) < SEQUENCER_BATCH)
	{
		char	   *errm = NULL;
		XLogRecord *record = XLogReadRecord(decoding->reader, &errm);

		if (errm != NULL)
			elog(ERROR, "could not read the WAL for the commit log: %s", errm);
		if (record != NULL)
		{
			LogicalDecodingProcessRecord(decoding, decoding->reader);
			replayed = true;
		}
		CHECK_FOR_INTERRUPTS();
	}
	MemoryContextSwitchTo(old);
	sequencer_decoding_flag(false);
	if (replayed && !XLogRecPtrIsInvalid(caches_suspect_until))
	{
		if (decoding->reader->EndRecPtr > caches_suspect_until)
			caches_suspect_until = InvalidXLogRecPtr;
		caches_emptying = true;
		InvalidateSystemCaches();
		caches_emptying = false;
	}
	return list_length(decoded) >= SEQUENCER_BATCH;
}

/* Whether PUBLISH_MS has passed since the pending horizon was taken. */
static bool
sequencer_publish_due(TimestampTz now)
{
	return !pending || TimestampDifferenceExceeds(pending_at, now, PUBLISH_MS);
}

/*
 * Publish the pending horizon once the decoding has passed its WAL
 * position (what it decoded is numbered by now, in this transaction), and
 * take the next one; numbered: this transaction numbered rows.
 */
static void
sequencer_publish(bool numbered)
{
	TimestampTz now = GetCurrentTimestamp();

	if (numbered)
		numbered_since_taken = true;
	publish_wanted = true;
	if (!sequencer_publish_due(now))
		return;
	if (pending)
	{
		Datum		below = FullTransactionIdGetDatum(pending_below);

		if (decoding->reader->EndRecPtr < pending_lsn)
			return;				/* kept: the decoding gets there with the next WAL */
		if (SPI_execute_plan(es_plan(&complete_plan), &below, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not update the state of the commit log");
		/* The units in the log move their horizon checkpoints up. */
		es_worker_wake_readers_at_commit();
		published_below = pending_below;
	}
	pending_below = es_commit_horizon_now();
	pending_lsn = GetXLogInsertRecPtr();
	pending_at = now;
	pending = true;

	/*
	 * Another one to publish: rows were numbered since the last was taken,
	 * or the horizon moved on (an appender ended).  Idle, it stays one
	 * above the largest key stored (horizon.c): the publishing stops.
	 */
	publish_wanted = numbered_since_taken || FullTransactionIdFollows(pending_below, published_below);
	numbered_since_taken = false;
}

/* A pass that decoded nothing: publish in a transaction of its own. */
static void
sequencer_publish_step(EsStore *s, void *arg)
{
	sequencer_publish(false);
}

/*
 * Number the transactions decoded: one row each in es_commit_log, in one
 * statement (a statement per transaction cost more than the decoding).
 */
static void
sequencer_number_step(EsStore *s, void *arg)
{
	int			ntx = list_length(decoded);
	Datum	   *xids = palloc(sizeof(Datum) * ntx);
	Datum	   *lsns = palloc(sizeof(Datum) * ntx);
	Datum	   *times = palloc(sizeof(Datum) * ntx);
	Datum	   *firsts = palloc(sizeof(Datum) * ntx);
	Datum	   *counts = palloc(sizeof(Datum) * ntx);
	Datum	   *keys = palloc(sizeof(Datum) * ntx);
	int			size = Max(ntx, 64);
	Datum	   *positions = palloc(sizeof(Datum) * size);
	int			npositions = 0;
	Datum		args[7];
	ListCell   *lc;
	int			i = 0;

	foreach(lc, decoded)
	{
		Decoded    *d = lfirst(lc);
		FullTransactionId xid;
		TimestampTz committed_at;
		FullTransactionId max_key;

		CHECK_FOR_INTERRUPTS();
		firsts[i] = Int32GetDatum(npositions + 1);
		counts[i] = Int32GetDatum(sequencer_parse(d->line, &xid, &committed_at, &max_key,
												  &positions, &npositions, &size));
		/* Its commit is decoded; its backend may not have made it visible yet. */
		if (TransactionIdIsInProgress(XidFromFullTransactionId(xid)))
			XactLockTableWait(XidFromFullTransactionId(xid), NULL, NULL, XLTW_None);
		xids[i] = FullTransactionIdGetDatum(xid);
		lsns[i] = LSNGetDatum(d->lsn);
		times[i] = TimestampTzGetDatum(committed_at);
		keys[i] = FullTransactionIdGetDatum(max_key);
		i++;
	}
	args[0] = PointerGetDatum(construct_array(xids, ntx, XID8OID, sizeof(FullTransactionId), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[1] = PointerGetDatum(construct_array(lsns, ntx, PG_LSNOID, sizeof(XLogRecPtr), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[2] = PointerGetDatum(construct_array(times, ntx, TIMESTAMPTZOID, sizeof(TimestampTz), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[3] = PointerGetDatum(construct_array(firsts, ntx, INT4OID, sizeof(int32), true, TYPALIGN_INT));
	args[4] = PointerGetDatum(construct_array(positions, npositions, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[5] = PointerGetDatum(construct_array(counts, ntx, INT4OID, sizeof(int32), true, TYPALIGN_INT));
	args[6] = PointerGetDatum(construct_array(keys, ntx, XID8OID, sizeof(FullTransactionId), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	if (SPI_execute_plan(es_plan(&log_plan), args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not add to the commit log");
	sequencer_publish(true);
	/* The units that read the log have more. */
	es_worker_wake_readers_at_commit();
}

/* A step in a transaction of its own; an error is logged. */
static bool
sequencer_run(EsStep step, void *arg)
{
	return es_step_in_transaction(step, arg, true, NULL, NULL, NULL);
}

static long
sequencer_pass(bool *reads_appends)
{
	bool		more;

	*reads_appends = true;
	/* A standby's slots do not exist: the promoted server makes its own, with a tail. */
	if (RecoveryInProgress())
		return es_worker_poll_interval;
	if (!slot_ready)
	{
		bool		made = false;

		if (!sequencer_run(sequencer_slot_step, &made) ||
			(made && (!sequencer_run(sequencer_create_step, NULL) || !sequencer_run(sequencer_tail_step, NULL))))
			return es_worker_poll_interval;
		slot_ready = true;
	}
	/* Numbered first, then confirmed: a crash in between decodes them again, and they are skipped. */
	more = sequencer_decode();
	if (decoded != NIL)
	{
		XLogRecPtr	last = ((Decoded *) llast(decoded))->lsn;

		if (!sequencer_run(sequencer_number_step, NULL))
			return es_worker_poll_interval;		/* kept, numbered at the next pass */

		/*
		 * Durable before confirmed: with synchronous_commit off, a crash could
		 * lose the numbering while the slot, saved to disk when its restart
		 * point moves, has passed what it numbered for good.
		 */
		XLogFlush(XactLastCommitEnd);
		LogicalConfirmReceivedLocation(last);
		ReplicationSlotMarkDirty();
		decoded = NIL;
		MemoryContextReset(lines_cxt);
	}
	else if (publish_wanted && sequencer_publish_due(GetCurrentTimestamp()) &&
			 !sequencer_run(sequencer_publish_step, NULL))
		return es_worker_poll_interval;
	if (more)
		return 0;
	if (publish_wanted && !sequencer_publish_due(GetCurrentTimestamp()))
		return Min(PUBLISH_MS, es_worker_poll_interval);
	return es_worker_poll_interval;
}

/*
 * PostgreSQL 15.20 and later decode only through the output plugins that
 * output_plugin_libraries names, superusers included, who may add to it
 * in their session: the sequencer adds the extension's own, for itself
 * alone (a REPLICATION user who wants to decode through it needs the
 * DBA's setting).  It also starts watching the relations' definitions
 * (once per process: a callback cannot be taken back).
 */
static void
sequencer_start(void)
{
	const char *trusted = GetConfigOption("output_plugin_libraries", true, false);
	static bool watching = false;

	if (!watching)
		CacheRegisterRelcacheCallback(sequencer_relation_changed, (Datum) 0);
	watching = true;

	if (trusted != NULL)
		SetConfigOption("output_plugin_libraries",
						trusted[0] != '\0' ? psprintf("%s, ultracore_es", trusted) : "ultracore_es",
						PGC_SUSET, PGC_S_SESSION);
}

/* The slot released (at exit, PostgreSQL releases it anyway), for the next process or pass. */
static void
sequencer_stop(void)
{
	if (decoding != NULL && !proc_exit_inprogress)
		FreeDecodingContext(decoding);
	decoding = NULL;
	if (MyReplicationSlot != NULL)
		ReplicationSlotRelease();
	decoded = NIL;
	if (lines_cxt != NULL)
		MemoryContextReset(lines_cxt);
	slot_ready = false;
	pending = false;
	publish_wanted = true;
	numbered_since_taken = false;
}

static const EsWorkerService sequencer_service = {
	.name = "sequencer",
	.wanted = sequencer_wanted,
	.start = sequencer_start,
	.pass = sequencer_pass,
	.stop = sequencer_stop,
};

/*
 * es_sequencer_drop_slot: after DROP EXTENSION, the database's slot goes
 * too, or it would keep the WAL for ever.  The database's workers were
 * held before the drop (launcher.c): the slot is released by now, or soon
 * (waited for).  If the transaction then aborts, the sequencer makes the
 * slot again, with a tail.
 */
void
es_sequencer_drop_slot(void)
{
	char	   *name = sequencer_slot_name();

	if (SearchNamedReplicationSlot(name, true) != NULL)
		ReplicationSlotDrop(name, false);
}

/* es_sequencer_init: from _PG_init. */
void
es_sequencer_init(void)
{
	es_worker_add_service(&sequencer_service);
}
