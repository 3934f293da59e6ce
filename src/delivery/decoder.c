/*-------------------------------------------------------------------------
 *
 * decoder.c
 *	  The logical decoding output plugin "ultracore_es": each committed
 *	  transaction that appended events, at its commit, in commit order.
 *
 * The sequencer (sequencer.c) reads the store's replication slot through
 * this plugin and numbers what it emits into es_commit_log.  Logical
 * decoding hands over a transaction when its commit record is decoded,
 * whatever else is still running: unlike the commit horizon, a transaction
 * left open, appending or not, holds no other back, and a rolled-back one
 * never shows.
 *
 * One line per transaction that inserted rows into es_events (into its
 * partitions: nothing for the others, nor for any other table):
 *
 *		<xid8> <commit time, microseconds since 2000-01-01 UTC> <key> {<position>,...}
 *
 * the transaction's full id, when it committed, the largest commit-order
 * key (es_events.tx_id) of its events, and their positions in the order it
 * inserted them (their version order within each aggregate).
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/transam.h"
#include "catalog/partition.h"
#include "replication/logical.h"
#include "replication/output_plugin.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/xid8.h"

#include "core/store.h"

/* A table inserted into, and whether it is a partition of es_events. */
typedef struct DecodedTable
{
	Oid			relid;			/* hash key */
	bool		events;			/* a partition of es_events (or es_events, in 1.0) */
	AttrNumber	position_attnum;
	AttrNumber	key_attnum;		/* tx_id */
} DecodedTable;

/* Kept for the decoding's life: the sequencer holds one for its whole process. */
typedef struct DecoderState
{
	Oid			events_relid;	/* InvalidOid: the extension is not installed */
	bool		looked_up;		/* events_relid is set */
	HTAB	   *tables;			/* DecodedTable by relid */
	StringInfoData positions;	/* of the transaction being decoded */
	int64		count;
	FullTransactionId max_key;	/* of its events */
} DecoderState;

extern PGDLLEXPORT void _PG_output_plugin_init(OutputPluginCallbacks *cb);

static void
decoder_startup(LogicalDecodingContext *ctx, OutputPluginOptions *options, bool is_init)
{
	DecoderState *state = MemoryContextAllocZero(ctx->context, sizeof(DecoderState));
	MemoryContext old = MemoryContextSwitchTo(ctx->context);
	ListCell   *option;

	foreach(option, ctx->output_plugin_options)
	{
		DefElem    *elem = lfirst(option);

		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("output plugin ultracore_es takes no option, got \"%s\"", elem->defname)));
	}
	initStringInfo(&state->positions);
	MemoryContextSwitchTo(old);
	{
		HASHCTL		hctl;

		hctl.keysize = sizeof(Oid);
		hctl.entrysize = sizeof(DecodedTable);
		hctl.hcxt = ctx->context;
		state->tables = hash_create("ultracore_es decoded tables", 64, &hctl,
									HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	ctx->output_plugin_private = state;
	options->output_type = OUTPUT_PLUGIN_TEXTUAL_OUTPUT;
	options->receive_rewrites = false;
}

/*
 * The store's es_events, looked up at the first change decoded (the
 * catalogs are read as of that change): none while the extension is not
 * installed.
 */
static Oid
decoder_events_relid(DecoderState *state)
{
	if (!state->looked_up)
	{
		Oid			nspid = es_extension_schema(NULL, 0);

		state->looked_up = true;
		if (OidIsValid(nspid))
			state->events_relid = get_relname_relid("es_events", nspid);
	}
	return state->events_relid;
}

/*
 * What the decoder knows of the table relation: whether it holds events
 * (es_events, or one of its partitions), and where their columns are,
 * looked up (as of the change) the first time it is inserted into.  A
 * table stays what it was found to be: the worker attaches a partition in
 * the transaction that creates it, before any row goes in.
 */
static DecodedTable *
decoder_table(DecoderState *state, Relation relation)
{
	Oid			relid = RelationGetRelid(relation);
	Oid			events = decoder_events_relid(state);
	DecodedTable *t;
	bool		found;

	t = hash_search(state->tables, &relid, HASH_ENTER, &found);
	if (!found)
	{
		t->events = OidIsValid(events) &&
			(relid == events ||
			 (relation->rd_rel->relispartition && get_partition_parent(relid, false) == events));
		if (t->events)
		{
			t->position_attnum = get_attnum(relid, "position");
			t->key_attnum = get_attnum(relid, "tx_id");
			t->events = (t->position_attnum != InvalidAttrNumber && t->key_attnum != InvalidAttrNumber);
		}
	}
	return t;
}

static void
decoder_begin(LogicalDecodingContext *ctx, ReorderBufferTXN *txn)
{
	DecoderState *state = ctx->output_plugin_private;

	resetStringInfo(&state->positions);
	state->count = 0;
	state->max_key = InvalidFullTransactionId;
}

static void
decoder_change(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, Relation relation,
			   ReorderBufferChange *change)
{
	DecoderState *state = ctx->output_plugin_private;
	DecodedTable *table;
	HeapTuple	tuple;
	Datum		position;
	Datum		key;
	bool		isnull;
	bool		key_isnull;
	MemoryContext old;

	if (change->action != REORDER_BUFFER_CHANGE_INSERT || change->data.tp.newtuple == NULL)
		return;
	table = decoder_table(state, relation);
	if (!table->events)
		return;
	tuple = &change->data.tp.newtuple->tuple;
	position = heap_getattr(tuple, table->position_attnum, RelationGetDescr(relation), &isnull);
	key = heap_getattr(tuple, table->key_attnum, RelationGetDescr(relation), &key_isnull);
	if (isnull || key_isnull)
		return;					/* the columns are NOT NULL: cannot happen */
	if (FullTransactionIdFollows(DatumGetFullTransactionId(key), state->max_key))
		state->max_key = DatumGetFullTransactionId(key);
	old = MemoryContextSwitchTo(ctx->context);
	appendStringInfo(&state->positions, "%s" INT64_FORMAT, state->count > 0 ? "," : "",
					 DatumGetInt64(position));
	MemoryContextSwitchTo(old);
	state->count++;
}

/* The transaction's full id: its xid, in the epoch of the newest id that is not after it. */
static FullTransactionId
decoder_full_xid(TransactionId xid)
{
	FullTransactionId next = ReadNextFullTransactionId();
	uint32		epoch = EpochFromFullTransactionId(next);

	if (xid > XidFromFullTransactionId(next))
		epoch--;
	return FullTransactionIdFromEpochAndXid(epoch, xid);
}

static void
decoder_commit(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, XLogRecPtr commit_lsn)
{
	DecoderState *state = ctx->output_plugin_private;

	if (state->count == 0)
		return;
	OutputPluginPrepareWrite(ctx, true);
	appendStringInfo(ctx->out, UINT64_FORMAT " " INT64_FORMAT " " UINT64_FORMAT " {%s}",
					 U64FromFullTransactionId(decoder_full_xid(txn->xid)),
					 (int64) txn->xact_time.commit_time, U64FromFullTransactionId(state->max_key),
					 state->positions.data);
	OutputPluginWrite(ctx, true);
}

void
_PG_output_plugin_init(OutputPluginCallbacks *cb)
{
	cb->startup_cb = decoder_startup;
	cb->begin_cb = decoder_begin;
	cb->change_cb = decoder_change;
	cb->commit_cb = decoder_commit;
}
