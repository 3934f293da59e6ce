/*-------------------------------------------------------------------------
 *
 * append_hooks.c
 *	  How the write path tells the layers above it what it did: listeners
 *	  registered from _PG_init, called after each append's inserts, and
 *	  when a transaction that appended commits.
 *
 * The write path depends on nothing above it.  Inline projections and
 * automatic snapshots run as listeners of each append (in its transaction,
 * where an error refuses it); the statistics and the workers listen for
 * commits.  What a transaction appended is counted per subtransaction
 * level, so that the events of an aborted subtransaction are not
 * announced at commit.
 *
 * Backend-local state only; no locks.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "write/append.h"

#include "access/xact.h"

#define MAX_LISTENERS	8
#define MAX_NEST		64		/* subtransaction levels counted apart */

static const EsAppendListener *listeners[MAX_LISTENERS];
static int	nlisteners = 0;

/* What the current transaction appended, per subtransaction level. */
static uint64 pending_count[MAX_NEST + 1];
static int	pending_top_level = 0;
static uint64 pending_keys[ES_COMMIT_KEYS];
static int	npending_keys = 0;

/* es_append_listen: from _PG_init; listeners are called in this order. */
void
es_append_listen(const EsAppendListener *listener)
{
	if (nlisteners == MAX_LISTENERS)
		elog(ERROR, "too many ultracore_es append listeners");
	listeners[nlisteners++] = listener;
}

/* Whether a listener wants the rows of the append under way. */
bool
es_append_listeners_want_rows(void)
{
	bool		want = false;
	int			i;

	/* Each is asked: asking refreshes its cache under the lock just taken. */
	for (i = 0; i < nlisteners; i++)
		if (listeners[i]->wants_rows != NULL && listeners[i]->wants_rows())
			want = true;
	return want;
}

/*
 * es_append_announce_insert: an append stored its events under commit-order
 * key; counted for the commit, then told to the listeners.
 */
void
es_append_announce_insert(EsStore *s, const EsAppendRequest *req, int64 base, TupleDesc desc,
						  HeapTuple *rows, FullTransactionId key)
{
	int			level = Min(GetCurrentTransactionNestLevel(), MAX_NEST);
	uint64		k = U64FromFullTransactionId(key);
	int			i;

	pending_count[level] += req->nevents;
	pending_top_level = Max(pending_top_level, level);
	for (i = 0; i < npending_keys && pending_keys[i] != k; i++)
		;
	if (i == npending_keys && npending_keys < ES_COMMIT_KEYS)
		pending_keys[npending_keys++] = k;

	for (i = 0; i < nlisteners; i++)
		if (listeners[i]->inserted != NULL)
			listeners[i]->inserted(s, req, base, desc, rows);
}

static void
pending_reset(void)
{
	memset(pending_count, 0, sizeof(pending_count));
	pending_top_level = 0;
	npending_keys = 0;
}

/*
 * Just before commit the listeners learn the transaction's commit-order
 * keys; at commit, how many events it appended.  Prepared transactions
 * announce nothing: their events are found by the workers' polls.
 */
static void
append_xact_callback(XactEvent event, void *arg)
{
	int			i;

	if (event == XACT_EVENT_PRE_COMMIT && npending_keys > 0)
	{
		for (i = 0; i < nlisteners; i++)
			if (listeners[i]->committing != NULL)
				listeners[i]->committing(pending_keys, npending_keys);
	}
	if (event == XACT_EVENT_COMMIT)
	{
		uint64		appended = 0;

		for (i = 0; i <= pending_top_level; i++)
			appended += pending_count[i];
		if (appended > 0)
			for (i = 0; i < nlisteners; i++)
				if (listeners[i]->committed != NULL)
					listeners[i]->committed(appended);
	}
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PREPARE || event == XACT_EVENT_PARALLEL_ABORT)
		pending_reset();
}

/* A released subtransaction's appends become its parent's; an aborted one's vanish. */
static void
append_subxact_callback(SubXactEvent event, SubTransactionId mySubid, SubTransactionId parentSubid,
						void *arg)
{
	int			level = Min(GetCurrentTransactionNestLevel(), MAX_NEST);
	int			i;

	if (event == SUBXACT_EVENT_COMMIT_SUB && level > 1)
	{
		for (i = level; i <= pending_top_level; i++)
		{
			pending_count[level - 1] += pending_count[i];
			pending_count[i] = 0;
		}
	}
	else if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		for (i = level; i <= pending_top_level; i++)
			pending_count[i] = 0;
	}
}

/* es_append_hooks_init: from _PG_init, preloaded or not. */
void
es_append_hooks_init(void)
{
	RegisterXactCallback(append_xact_callback, NULL);
	RegisterSubXactCallback(append_subxact_callback, NULL);
}
