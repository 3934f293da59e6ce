/*-------------------------------------------------------------------------
 *
 * append.h
 *	  The write path's request, shared by the SQL functions that build one
 *	  (append_sql.c) and the code that stores it (append.c).  The Kafka
 *	  ingest builds requests too.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_APPEND_H
#define ES_APPEND_H

#include "ultracore_es.h"

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

#endif							/* ES_APPEND_H */
