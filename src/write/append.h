/*-------------------------------------------------------------------------
 *
 * append.h
 *	  The write path: its request, shared by the SQL functions that build one
 *	  (append_sql.c), the Kafka ingest, and the code that stores it
 *	  (append.c); and the hooks through which it tells the layers above it
 *	  what it did (append_hooks.c).
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_APPEND_H
#define ES_APPEND_H

#include "access/htup.h"
#include "access/tupdesc.h"
#include "core/store.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

/* One event of an append. */
typedef struct EsEventIn
{
	char	   *event_id;
	bool		event_id_given; /* else generated */
	char	   *event_type;
	Jsonb	   *data;
	Jsonb	   *metadata;
	char	   *causation_id;	/* NULL when absent */
	char	   *correlation_id; /* NULL when absent */
	TimestampTz occurred_at;
	bool		occurred_at_given;	/* else the append time */
	int32		schema_version; /* set from the catalog */
	/* what is stored, when personal fields were sealed (else NULL: as given) */
	Jsonb	   *stored_data;
	Jsonb	   *stored_metadata;
} EsEventIn;

/*
 * es_events opened for inserts (its indexes, an executor state, slots):
 * callers that make many appends in one transaction (the Kafka ingest's
 * runs) open it once instead of once per append.
 */
typedef struct EsEventInserter EsEventInserter;

/* An append: events to one aggregate, and what was stored for them. */
typedef struct EsAppendRequest
{
	char	   *aggregate_type;
	char	   *aggregate_id;
	bool		any;			/* expected_version was NULL */
	int64		expected;		/* else 0, -1 or the version */
	int			nevents;
	EsEventIn  *events;
	char	   *appended_by;	/* the calling role */
	bool		ids_unseen;		/* the caller knows its event ids are not stored:
								 * they are not looked up, and one that is stored
								 * fails the append (the primary key refuses it)
								 * instead of being absorbed */
	TimestampTz now;
	EsEventInserter *inserter;	/* es_events opened by the caller, or NULL */
	/* results, one per event */
	int64	   *versions;
	int64	   *positions;
	bool		was_stored;		/* an identical earlier append was found */
} EsAppendRequest;

extern void es_append_prepare(EsAppendRequest *req);
extern void es_append_execute(EsAppendRequest *req, EsStore *store);
extern EsEventInserter *es_event_inserter_open(EsStore *store);
extern void es_event_inserter_close(EsEventInserter *ins);

/*
 * What the write path announces.  The layers above it (snapshots,
 * projections, statistics, the workers) register listeners from _PG_init;
 * the write path calls them in the order they registered and knows none
 * of them.
 */
typedef struct EsAppendListener
{
	/*
	 * Whether inserted() needs the rows stored; asked once per append, once
	 * es_events is open for writing (so a listener's cache, refreshed by
	 * invalidations, is as fresh as that lock makes it).  NULL: never.
	 */
	bool		(*wants_rows) (void);

	/*
	 * An append stored its events (versions base + 1 to base + nevents), in
	 * its transaction, under the aggregate's lock, as the store's owner with
	 * an SPI connection.  rows are the stored rows, in version order, when
	 * any listener wanted them, else NULL.  An error refuses the append.
	 */
	void		(*inserted) (EsStore *s, const EsAppendRequest *req, int64 base, TupleDesc desc,
							 HeapTuple *rows);

	/*
	 * The transaction that appended is about to commit, with these
	 * commit-order keys (at most ES_COMMIT_KEYS distinct ones are kept).
	 * Prepared transactions announce nothing.
	 */
	void		(*committing) (const uint64 *keys, int nkeys);

	/* It committed, having appended events (subtransactions that aborted excluded). */
	void		(*committed) (uint64 events);
} EsAppendListener;

#define ES_COMMIT_KEYS	8

extern void es_append_listen(const EsAppendListener *listener);
extern void es_append_hooks_init(void);

/* append.c's side of the hooks (append_hooks.c) */
extern bool es_append_listeners_want_rows(void);
extern void es_append_announce_insert(EsStore *s, const EsAppendRequest *req, int64 base,
									  TupleDesc desc, HeapTuple *rows, FullTransactionId key);

#endif							/* ES_APPEND_H */
