/*-------------------------------------------------------------------------
 *
 * consumer_internal.h
 *	  A consumer's batch as the consumer engine (consumer.c), its dead
 *	  letters (dead_letter.c) and its segments (segment.c) share it.
 *	  Nothing else includes it.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_CONSUMER_INTERNAL_H
#define ES_CONSUMER_INTERNAL_H

#include "access/htup.h"
#include "access/transam.h"
#include "access/tupdesc.h"
#include "fmgr.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"

#include "delivery/consumer.h"
#include "delivery/read_model.h"
#include "read/commit_point.h"

typedef struct BatchEvent
{
	HeapTuple	tuple;			/* es_events row type, payload upcast */
	char	   *event_id;
	char	   *aggregate_id;
	char	   *event_type;
	FullTransactionId tx;
	int64		position;
	int64		seq;			/* its row in the commit log, when read there */
	TimestampTz recorded_at;
} BatchEvent;

/*
 * Where an earlier generation of a consumer's segments had got to: the
 * events of its segment up to there were handled (segment.c).
 */
typedef struct EsFence
{
	int			segments;
	int			segment;
	EsCommitPoint point;		/* below the horizon (a split takes the units out of the log) */
} EsFence;

/*
 * A unit of delivery: a consumer, or one segment of a consumer split by
 * aggregate (segments > 1), with its checkpoint and what it calls.
 */
typedef struct Consumer
{
	const char *name;
	int			segments;		/* 1: not split */
	int			segment;		/* 0 .. segments - 1 */
	int			generation;
	EsCommitPoint point;		/* the checkpoint */
	EsCommitRead read;			/* the batch's read */
	bool		paused;
	char	   *retry_event_id; /* NULL: no retry pending */
	int32		retry_attempts;
	TimestampTz retry_first_failed_at;
	TimestampTz retry_at;
	Oid			function;
	EsReadModel *model;			/* the built-in read model function folds into; NULL: none */
	bool		reveal;			/* it gets personal fields opened: not a read model's */
	Datum		event_types;	/* text[], or 0 for all */
	int32		max_retries;
	int64		backoff_us;
	int64		timeout_ms;		/* 0: none */
	Oid			run_as;
	FmgrInfo	flinfo;
	TupleDesc	event_desc;
	EsFence    *fences;			/* of earlier generations */
	int			nfences;
	/* the batch */
	BatchEvent *events;
	int			nevents;
	int			max_events;
	HTAB	   *fold_rows;		/* a read model's rows the batch folds into (consumer_fold) */
	/* what the batch did */
	int			handled;
	int			retried_letters;	/* the first ones handled: dead letters */
	Datum	   *handled_ids;
	Datum	   *handled_positions;
	FullTransactionId *handled_tx;
	TimestampTz *handled_recorded;
	char	   *last_error;
} Consumer;

/* consumer.c */
extern void es_consumer_collect(Datum *values, bool *nulls, void *arg);
extern HTAB *es_consumer_ledger(Consumer *c);
extern bool es_consumer_apply_careful(Consumer *c, BatchEvent *ev, char **error);
extern void es_consumer_handled(Consumer *c, BatchEvent *ev);

/* dead_letter.c */
extern int64 es_dead_letter_add(Consumer *c, BatchEvent *ev, const char *status, int64 behind,
								const char *error, int32 attempts, TimestampTz first_failed);
extern HTAB *es_dead_letter_parked(Consumer *c);
extern int64 es_dead_letter_parked_behind(HTAB *parked, const char *aggregate_id);
extern void es_dead_letter_park(HTAB *parked, const char *aggregate_id, int64 dead_letter);
extern void es_dead_letter_retry(Consumer *c);

/* segment.c */
extern int	es_segment_of_id(const char *aggregate_id, int segments);
extern void es_segment_load_fences(Consumer *c);
extern bool es_segment_fenced(const Consumer *c, const BatchEvent *ev);

#endif							/* ES_CONSUMER_INTERNAL_H */
