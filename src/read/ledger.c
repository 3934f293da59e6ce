/*-------------------------------------------------------------------------
 *
 * ledger.c
 *	  Tamper evidence: es_digest seals the committed history into ledger
 *	  blocks and returns a digest to keep outside the database; es_verify
 *	  recomputes every hash and chain and says what no longer adds up.
 *
 * Two chains.  Each event's hash covers its content and its aggregate's
 * previous event (event_hash.c): a changed, deleted or inserted event breaks
 * its aggregate's chain.  The ledger chains every event's hash again in
 * commit order, chain = SHA-256(chain || hash), which ties the aggregates
 * together: a block (es_ledger_blocks) records the chain and the number of
 * events below a commit horizon, and a digest is the newest block.  Events
 * below a horizon are all committed and no event can join them later
 * (horizon.c), so a block's count and chain stay exactly true, and an event
 * removed, added or changed below it (whole aggregates included) changes
 * them.
 *
 * What it does not prove: someone who can write the tables can recompute
 * every hash, chain and block after a change.  The digest kept outside is
 * the proof against that: es_verify(digest => ...) recomputes the chain from
 * the first event, without trusting any stored block.
 *
 * Events stored by release 1.0 carry no hash (es_ledger.unhashed_through):
 * the chain uses their content hash, so the first es_digest after the
 * update seals them.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/snapmgr.h"
#include "utils/typcache.h"
#include "utils/xid8.h"

#include "core/event.h"
#include "core/event_hash.h"
#include "core/horizon.h"
#include "core/store.h"
#include "core/validate.h"

#define LEDGER_SLICE 1000

static EsPlan lock_plan = {
	"LOCK TABLE @extschema@.es_ledger_blocks IN SHARE ROW EXCLUSIVE MODE", 0, {0}
};

static EsPlan last_block_plan = {
	"SELECT b.block, b.horizon, b.total_events, b.hash FROM @extschema@.es_ledger_blocks b"
	" ORDER BY b.block DESC LIMIT 1", 0, {0}
};

static EsPlan blocks_plan = {
	"SELECT b.block, b.horizon, b.total_events, b.hash FROM @extschema@.es_ledger_blocks b"
	" ORDER BY b.block", 0, {0}
};

static EsPlan unhashed_plan = {
	"SELECT max(l.unhashed_through) FROM @extschema@.es_ledger l", 0, {0}
};

/*
 * Commit order from $1 (inclusive) to $2 (exclusive): each event's key and
 * hash, and the whole row only where there is no hash to chain (1.0's).
 */
static EsPlan commit_range_plan = {
	"SELECT e.tx_id, e.hash, CASE WHEN e.hash IS NULL THEN e END FROM @extschema@.es_events e"
	" WHERE e.tx_id OPERATOR(pg_catalog.>=) $1 AND e.tx_id OPERATOR(pg_catalog.<) $2"
	" ORDER BY e.tx_id, e.position",
	2, {XID8OID, XID8OID}
};

static EsPlan insert_block_plan = {
	"INSERT INTO @extschema@.es_ledger_blocks (block, horizon, events, total_events, hash, sealed_at)"
	" VALUES ($1, $2, $3, $4, $5, pg_catalog.statement_timestamp())",
	5, {INT8OID, XID8OID, INT8OID, INT8OID, BYTEAOID}
};

static EsPlan digest_plan = {
	"SELECT pg_catalog.jsonb_build_object('block', b.block, 'horizon', b.horizon::text,"
	"   'events', b.total_events, 'hash', pg_catalog.encode(b.hash, 'hex'), 'sealed_at', b.sealed_at)"
	"  FROM @extschema@.es_ledger_blocks b WHERE b.block OPERATOR(pg_catalog.=) $1",
	1, {INT8OID}
};

static EsPlan aggregate_chain_plan = {
	"SELECT e.* FROM @extschema@.es_events e"
	" WHERE $1 IS NULL OR e.aggregate_id OPERATOR(pg_catalog.=) $1"
	" ORDER BY e.aggregate_id, e.version",
	1, {TEXTOID}
};

static EsPlan empty_aggregates_plan = {
	"SELECT a.aggregate_id FROM @extschema@.es_aggregates a"
	" WHERE ($1 IS NULL OR a.aggregate_id OPERATOR(pg_catalog.=) $1)"
	"   AND NOT EXISTS (SELECT FROM @extschema@.es_events e"
	"                    WHERE e.aggregate_id OPERATOR(pg_catalog.=) a.aggregate_id)"
	" ORDER BY a.aggregate_id",
	1, {TEXTOID}
};

/* A point of the ledger's chain: how many events below horizon, and the chain there. */
typedef struct LedgerMark
{
	int64		block;			/* 0: a digest given to es_verify */
	FullTransactionId horizon;
	int64		events;
	uint8		chain[ES_HASH_LEN];
} LedgerMark;

static int64
ledger_unhashed_through(void)
{
	bool		isnull;
	Datum		d;

	if (SPI_execute_plan(es_plan(&unhashed_plan), NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read es_ledger");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? 0 : DatumGetInt64(d);
}


static void
ledger_mark_of(HeapTuple tup, TupleDesc desc, LedgerMark *m)
{
	bool		isnull;

	m->block = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	m->horizon = DatumGetFullTransactionId(SPI_getbinval(tup, desc, 2, &isnull));
	m->events = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
	if (!es_hash_of_datum(SPI_getbinval(tup, desc, 4, &isnull), isnull, m->chain))
		memset(m->chain, 0xff, ES_HASH_LEN);	/* a damaged block: matches nothing */
}

/* Run plan through a cursor and hand fn every row, in a memory context reset after each. */
typedef void (*LedgerRowFn) (HeapTuple row, TupleDesc desc, void *arg);

static void
ledger_scan(EsPlan *plan, Datum *args, const char *nulls, bool read_only, LedgerRowFn fn, void *arg)
{
	Portal		portal = SPI_cursor_open(NULL, es_plan(plan), args, nulls, read_only);
	MemoryContext rowcxt = AllocSetContextCreate(CurrentMemoryContext, "ultracore_es ledger row",
												 ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		uint64		i;

		SPI_cursor_fetch(portal, true, LEDGER_SLICE);
		if (SPI_processed == 0)
			break;
		for (i = 0; i < SPI_processed; i++)
		{
			MemoryContext old = MemoryContextSwitchTo(rowcxt);

			CHECK_FOR_INTERRUPTS();
			fn(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, arg);
			MemoryContextSwitchTo(old);
			MemoryContextReset(rowcxt);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	MemoryContextDelete(rowcxt);
}

/*
 * The commit-order pass: each event's key, and the link it adds to the
 * ledger's chain: its stored hash, or for an event stored before hashes
 * (or one whose hash is missing: es_verify says so) the hash of its
 * content alone.
 */
typedef void (*LedgerLinkFn) (FullTransactionId tx, const uint8 *link, void *arg);

typedef struct CommitScan
{
	TupleDesc	events_desc;	/* es_events rows, for those without a hash */
	LedgerLinkFn fn;
	void	   *arg;
} CommitScan;

/* ledger_scan callback of commit_range_plan's rows. */
static void
commit_scan_row(HeapTuple tup, TupleDesc desc, void *arg)
{
	CommitScan *cs = (CommitScan *) arg;
	bool		null;
	FullTransactionId tx = DatumGetFullTransactionId(SPI_getbinval(tup, desc, 1, &null));
	Datum		hash = SPI_getbinval(tup, desc, 2, &null);
	bool		no_hash = null;
	Datum		whole = SPI_getbinval(tup, desc, 3, &null);
	uint8		link[ES_HASH_LEN];

	if (es_hash_of_datum(hash, no_hash, link))
		;
	else if (!no_hash || null)
	{
		/* A hash that is no SHA-256 (written by hand): a link nothing matches. */
		memset(link, 0xff, ES_HASH_LEN);
	}
	else
	{
		HeapTupleHeader th = DatumGetHeapTupleHeader(whole);
		HeapTupleData row;
		Datum		values[EV_NATTS];
		bool		isnull[EV_NATTS];

		row.t_len = HeapTupleHeaderGetDatumLength(th);
		ItemPointerSetInvalid(&row.t_self);
		row.t_tableOid = InvalidOid;
		row.t_data = th;
		es_deform_event(&row, cs->events_desc, values, isnull);
		es_event_hash(values, isnull, es_hash_zero, link);
	}
	cs->fn(tx, link, cs->arg);
}

/* Hand fn every event committed from `from` (inclusive) to `to` (exclusive), in commit order. */
static void
ledger_commit_scan(EsStore *s, FullTransactionId from, FullTransactionId to, bool read_only,
				   LedgerLinkFn fn, void *arg)
{
	Datum		args[2];
	CommitScan	cs;

	cs.events_desc = lookup_rowtype_tupdesc_copy(s->events_rowtype, -1);
	cs.fn = fn;
	cs.arg = arg;
	args[0] = FullTransactionIdGetDatum(from);
	args[1] = FullTransactionIdGetDatum(to);
	ledger_scan(&commit_range_plan, args, NULL, read_only, commit_scan_row, &cs);
}

/* es_digest's fold of the events it seals. */
typedef struct SealState
{
	int64		events;
	uint8		chain[ES_HASH_LEN];
} SealState;

static void
seal_event(FullTransactionId tx, const uint8 *link, void *arg)
{
	SealState  *st = (SealState *) arg;

	es_chain_hash(st->chain, link, st->chain);
	st->events++;
}

/*
 * es_digest() returns jsonb
 *
 * Seal the events committed since the last block (every event below the
 * commit horizon) into a new block, and return the newest block as the
 * digest: {"block", "horizon", "events", "hash", "sealed_at"}.  Without new
 * events, the last block.  Sealers queue on the blocks table's lock.
 */
PG_FUNCTION_INFO_V1(es_digest);
Datum
es_digest(PG_FUNCTION_ARGS)
{
	EsCall		call;
	LedgerMark	last;
	SealState	st;
	FullTransactionId horizon;
	Datum		args[5];
	bool		isnull;
	Datum		digest;

	PreventCommandIfReadOnly("es_digest()");
	es_require_read_committed("es_digest",
							  "It seals the events committed once it holds the blocks' lock, which a transaction snapshot taken earlier would not show (nor the block another call sealed meanwhile).");
	es_call_begin(fcinfo, &call);
	if (SPI_execute_plan(es_plan(&lock_plan), NULL, NULL, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not lock es_ledger_blocks");
	if (SPI_execute_plan(es_plan(&last_block_plan), NULL, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read es_ledger_blocks");
	if (SPI_processed == 1)
		ledger_mark_of(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, &last);
	else
	{
		last.block = 0;
		last.horizon = FullTransactionIdFromU64(0);
		last.events = 0;
		memcpy(last.chain, es_hash_zero, ES_HASH_LEN);
	}

	horizon = es_commit_horizon_push();
	st.events = 0;
	memcpy(st.chain, last.chain, ES_HASH_LEN);
	if (FullTransactionIdPrecedes(last.horizon, horizon))
		ledger_commit_scan(call.store, last.horizon, horizon, false, seal_event, &st);
	PopActiveSnapshot();

	if (st.events > 0 || last.block == 0)
	{
		last.block++;
		args[0] = Int64GetDatum(last.block);
		args[1] = FullTransactionIdGetDatum(horizon);
		args[2] = Int64GetDatum(st.events);
		args[3] = Int64GetDatum(last.events + st.events);
		args[4] = es_hash_datum(st.chain);
		if (SPI_execute_plan(es_plan(&insert_block_plan), args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not insert a ledger block");
	}
	args[0] = Int64GetDatum(last.block);
	if (SPI_execute_plan(es_plan(&digest_plan), args, NULL, false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not read ledger block " INT64_FORMAT, last.block);
	digest = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	digest = SPI_datumTransfer(digest, false, -1);
	es_call_end(&call);
	PG_RETURN_DATUM(digest);
}

/* es_verify's state. */
typedef struct VerifyState
{
	ReturnSetInfo *rsinfo;
	int64		unhashed_through;
	/* the aggregate chain: the previous row */
	char	   *aggregate_id;	/* NULL before the first row */
	int64		version;
	uint8		prev[ES_HASH_LEN];
	MemoryContext cxt;			/* for aggregate_id */
	/* the ledger chain */
	LedgerMark *marks;			/* blocks, then a digest, by horizon */
	int			nmarks;
	int			next_mark;
	int64		events;
	uint8		chain[ES_HASH_LEN];
} VerifyState;

static void
verify_problem(VerifyState *vs, const char *aggregate_id, int64 version, int64 position,
			   const char *problem)
{
	Datum		values[4];
	bool		nulls[4] = {aggregate_id == NULL, version < 0, position < 0, false};

	values[0] = aggregate_id ? CStringGetTextDatum(aggregate_id) : (Datum) 0;
	values[1] = Int64GetDatum(version);
	values[2] = Int64GetDatum(position);
	values[3] = CStringGetTextDatum(problem);
	tuplestore_putvalues(vs->rsinfo->setResult, vs->rsinfo->setDesc, values, nulls);
}

/* One row of the per-aggregate pass, in (aggregate_id, version) order. */
static void
verify_aggregate_event(HeapTuple row, TupleDesc desc, void *arg)
{
	VerifyState *vs = (VerifyState *) arg;
	Datum		values[EV_NATTS];
	bool		isnull[EV_NATTS];
	char	   *aggregate_id;
	int64		version;
	int64		position;
	uint8		stored[ES_HASH_LEN];
	uint8		computed[ES_HASH_LEN];
	bool		has_hash;
	bool		follows = true;

	es_deform_event(row, desc, values, isnull);
	aggregate_id = TextDatumGetCString(values[EV_AGGREGATE_ID]);
	version = DatumGetInt64(values[EV_VERSION]);
	position = DatumGetInt64(values[EV_POSITION]);
	has_hash = es_hash_of_datum(values[EV_HASH], isnull[EV_HASH], stored);

	if (vs->aggregate_id == NULL || strcmp(vs->aggregate_id, aggregate_id) != 0)
	{
		if (vs->aggregate_id)
			pfree(vs->aggregate_id);
		vs->aggregate_id = MemoryContextStrdup(vs->cxt, aggregate_id);
		vs->version = 0;
		memcpy(vs->prev, es_hash_zero, ES_HASH_LEN);
	}
	if (version != vs->version + 1)
	{
		follows = false;
		verify_problem(vs, aggregate_id, version, position,
					   version > vs->version + 1
					   ? psprintf("events missing before it: versions " INT64_FORMAT " to " INT64_FORMAT,
								  vs->version + 1, version - 1)
					   : psprintf("version out of order after version " INT64_FORMAT, vs->version));
	}
	if (!has_hash)
	{
		if (position > vs->unhashed_through)
			verify_problem(vs, aggregate_id, version, position, "no hash");
		memcpy(vs->prev, es_hash_zero, ES_HASH_LEN);
	}
	else
	{
		/* After a gap the hash it was chained to is gone: only its successors are checked. */
		if (follows)
		{
			es_event_hash(values, isnull, vs->prev, computed);
			if (memcmp(computed, stored, ES_HASH_LEN) != 0)
				verify_problem(vs, aggregate_id, version, position,
							   "hash does not match: the event, or the one before it, was changed");
		}
		memcpy(vs->prev, stored, ES_HASH_LEN);
	}
	vs->version = version;
}

/* Compare the chain with the marks whose horizon the ledger pass has reached. */
static void
verify_close_marks(VerifyState *vs, FullTransactionId upto, bool all)
{
	while (vs->next_mark < vs->nmarks &&
		   (all || !FullTransactionIdPrecedes(upto, vs->marks[vs->next_mark].horizon)))
	{
		LedgerMark *m = &vs->marks[vs->next_mark++];

		if (m->events == vs->events && memcmp(m->chain, vs->chain, ES_HASH_LEN) == 0)
			continue;
		verify_problem(vs, NULL, -1, -1,
					   psprintf("%s no longer adds up: " INT64_FORMAT " events below its horizon, "
								INT64_FORMAT " sealed%s",
								m->block > 0 ? psprintf("ledger block " INT64_FORMAT, m->block) : "the digest",
								vs->events, m->events, m->events == vs->events ? ", and another hash" : ""));
	}
}

/* One event of the ledger pass, in commit order. */
static void
verify_ledger_event(FullTransactionId tx, const uint8 *link, void *arg)
{
	VerifyState *vs = (VerifyState *) arg;

	verify_close_marks(vs, tx, false);
	es_chain_hash(vs->chain, link, vs->chain);
	vs->events++;
}

static int
mark_order(const void *a, const void *b)
{
	const LedgerMark *x = (const LedgerMark *) a;
	const LedgerMark *y = (const LedgerMark *) b;

	if (FullTransactionIdPrecedes(x->horizon, y->horizon))
		return -1;
	if (FullTransactionIdPrecedes(y->horizon, x->horizon))
		return 1;
	return (x->block < y->block) ? 1 : (x->block > y->block) ? -1 : 0;	/* the digest last */
}

/* A digest given to es_verify, as es_digest returned it. */
static void
verify_parse_digest(Jsonb *digest, LedgerMark *m)
{
	static const char *const keys[] = {"horizon", "events", "hash"};
	const char *text[3];
	int			i;

	for (i = 0; i < 3; i++)
	{
		JsonbValue *v = NULL;

		if (JB_ROOT_IS_OBJECT(digest))
			v = getKeyJsonValueFromContainer(&digest->root, keys[i], strlen(keys[i]), NULL);
		if (v == NULL || (v->type != jbvString && v->type != jbvNumeric))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("digest is not one es_digest() returned"),
					 errdetail("It has no \"%s\".", keys[i]),
					 errhint("Pass the whole JSON object es_digest() returned.")));
		text[i] = v->type == jbvString ? pnstrdup(v->val.string.val, v->val.string.len)
			: DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
	}
	m->block = 0;
	m->horizon = FullTransactionIdFromU64(DatumGetUInt64(DirectFunctionCall1(xid8in, CStringGetDatum(text[0]))));
	m->events = DatumGetInt64(DirectFunctionCall1(int8in, CStringGetDatum(text[1])));
	if (strlen(text[2]) != ES_HASH_LEN * 2 ||
		hex_decode(text[2], ES_HASH_LEN * 2, (char *) m->chain) != ES_HASH_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("digest is not one es_digest() returned"),
				 errdetail("Its \"hash\" is not 64 hexadecimal digits."),
				 errhint("Pass the whole JSON object es_digest() returned.")));
}

/*
 * es_verify(aggregate_id, digest) returns table (aggregate_id, version,
 * position, problem)
 *
 * One row per problem; none when the history is intact.  Checks every
 * event's hash and its aggregate's chain (of one aggregate, if given), the
 * aggregates without events, every ledger block (without aggregate_id) and
 * the digest, if given, from the first event.
 */
PG_FUNCTION_INFO_V1(es_verify);
Datum
es_verify(PG_FUNCTION_ARGS)
{
	char	   *aggregate_id = es_arg_id(fcinfo, 0, "aggregate_id", false);
	EsCall		call;
	VerifyState vs;
	Datum		arg;
	char		argnull;
	uint64		i;

	InitMaterializedSRF(fcinfo, 0);
	memset(&vs, 0, sizeof(vs));
	vs.rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	vs.cxt = CurrentMemoryContext;
	vs.marks = palloc(sizeof(LedgerMark));
	if (!PG_ARGISNULL(1))
	{
		verify_parse_digest(PG_GETARG_JSONB_P(1), &vs.marks[0]);
		vs.nmarks = 1;
	}

	es_call_begin(fcinfo, &call);
	vs.unhashed_through = ledger_unhashed_through();
	arg = aggregate_id ? CStringGetTextDatum(aggregate_id) : (Datum) 0;
	argnull = aggregate_id ? ' ' : 'n';
	ledger_scan(&aggregate_chain_plan, &arg, &argnull, true, verify_aggregate_event, &vs);

	if (SPI_execute_plan(es_plan(&empty_aggregates_plan), &arg, &argnull, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read es_aggregates");
	for (i = 0; i < SPI_processed; i++)
		verify_problem(&vs, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1), -1, -1,
					   "aggregate has no events: they were deleted");

	/* The ledger: every block without aggregate_id, and the digest. */
	if (aggregate_id == NULL)
	{
		if (SPI_execute_plan(es_plan(&blocks_plan), NULL, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read es_ledger_blocks");
		vs.marks = repalloc(vs.marks, sizeof(LedgerMark) * (vs.nmarks + SPI_processed));
		for (i = 0; i < SPI_processed; i++)
			ledger_mark_of(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, &vs.marks[vs.nmarks++]);
	}
	if (vs.nmarks > 0)
	{
		qsort(vs.marks, vs.nmarks, sizeof(LedgerMark), mark_order);
		memcpy(vs.chain, es_hash_zero, ES_HASH_LEN);
		ledger_commit_scan(call.store, FullTransactionIdFromU64(0), vs.marks[vs.nmarks - 1].horizon, true,
						   verify_ledger_event, &vs);
		verify_close_marks(&vs, InvalidFullTransactionId, true);
	}
	es_call_end(&call);
	return (Datum) 0;
}
