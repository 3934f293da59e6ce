/*-------------------------------------------------------------------------
 *
 * commit_point.h
 *	  Where a unit of delivery (a consumer, one of its segments, the Kafka
 *	  mirror) is in commit order, below the commit horizon or in the commit
 *	  log, and its switches between the two (commit_point.c).
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_COMMIT_POINT_H
#define ES_COMMIT_POINT_H

#include "access/htup.h"
#include "access/transam.h"
#include "access/tupdesc.h"

#include "read/read.h"

/*
 * A unit's point.  (tx, position) is a horizon checkpoint in both modes:
 * every event at or below it was handled.  In the log (in_log), the rows
 * before log_seq were read too, and the events of row log_seq up to
 * log_position.  skip: events above (tx, position) handled already (read
 * in the log before the unit fell back to the horizon), kept until tx
 * passes skip_until, the largest of their keys.
 */
typedef struct EsCommitPoint
{
	FullTransactionId tx;
	int64		position;
	bool		in_log;
	int64		log_seq;
	int64		log_position;
	int64	   *skip;			/* sorted positions; NULL: none */
	int			nskip;
	FullTransactionId skip_until;
} EsCommitPoint;

/* The commit log's state, as a unit's pass sees it. */
typedef struct EsLogState
{
	bool		live;			/* complete, and growing: units read it */
	bool		complete;		/* complete_below and complete_seq are known */
	FullTransactionId complete_below;	/* every committed event below it */
	int64		complete_seq;	/* is in a row up to this one */
} EsLogState;

/* The log columns of a unit's row, after (checkpoint_tx, checkpoint_position). */
#define ES_COMMIT_POINT_LOG_COLUMNS 4

extern void es_commit_log_state(EsLogState *st, bool in_log);
extern int64 es_commit_log_start(FullTransactionId after_tx);
extern void es_commit_point_from_row(EsCommitPoint *p, HeapTuple row, TupleDesc desc, int tx_att, int log_att);
extern void es_commit_point_log_args(const EsCommitPoint *p, Datum *args, char *nulls);
extern void es_commit_point_follow(EsCommitPoint *p, const EsLogState *st, const char *name, int segment,
								   int segments);
extern void es_commit_point_leave_log(EsCommitPoint *p, const EsLogState *st);
extern void es_commit_point_passed(EsCommitPoint *p, FullTransactionId tx, int64 position, int64 seq);
extern void es_commit_point_read(const EsCommitPoint *p, EsCommitRead *r);
extern void es_commit_point_advance(EsCommitPoint *p, const EsLogState *st);

#endif							/* ES_COMMIT_POINT_H */
