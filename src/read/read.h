/*-------------------------------------------------------------------------
 *
 * read.h
 *	  The read paths (read.c): rows of es_events through a cursor, deformed
 *	  and upcast, one aggregate's stream, one event, and the commit-order
 *	  query the consumers share with es_read_all.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_READ_H
#define ES_READ_H

#include "access/transam.h"
#include "core/store.h"
#include "utils/array.h"
#include "utils/timestamp.h"

typedef void (*EsRowCallback) (Datum *values, bool *nulls, void *arg);

/*
 * A reader that takes a row as stored, in the scan's slot, when nothing in
 * it was revealed or upcast: the set-returning functions copy it into their
 * result without forming it again from its values.  NULL: every row goes
 * to the EsRowCallback.
 */
typedef void (*EsSlotCallback) (TupleTableSlot *slot, void *arg);

/*
 * Where a point-in-time read of a stream stops: before the first event that
 * occurred after end (business time), or that was recorded after as_of
 * (what the store held then).  A prefix of the stream, never one with holes.
 */
typedef struct EsReadUntil
{
	bool		has_end;
	TimestampTz end;
	bool		has_as_of;
	TimestampTz as_of;
} EsReadUntil;

extern void es_read_rows(EsPlan *plan, Datum *args, char *nulls, bool read_only, bool reveal,
						 const EsReadUntil *until, EsRowCallback fn, void *arg);
extern void es_read_stream(const char *aggregate_id, int64 from_version, int64 to_version,
						   bool read_only, const EsReadUntil *until,
						   EsRowCallback fn, EsSlotCallback slot_fn, void *arg);
extern EsReadUntil *es_read_until(FunctionCallInfo fcinfo, int end_argno, int as_of_argno);
extern void es_read_event(const char *event_id, bool read_only, bool reveal, EsRowCallback fn, void *arg);

/*
 * A read in commit order (commit_point.c): below the commit horizon, in
 * (tx_id, position) order after the checkpoint; or in the commit log, after
 * (after_seq, after_seq_position).  Either way every event at or below the
 * checkpoint (after_tx, after_position), and every position in skip, is
 * passed over: the reader had it.
 */
typedef struct EsCommitRead
{
	FullTransactionId after_tx;	/* the checkpoint */
	int64		after_position;
	const int64 *skip;			/* sorted; NULL: none */
	int			nskip;
	bool		in_log;
	int64		after_seq;		/* in the log: the last row read, and where in it */
	int64		after_seq_position;
	FullTransactionId horizon;	/* below the horizon: where it stops */
	const char *aggregate_type; /* NULL: any */
	ArrayType  *event_types;	/* text[]; NULL: any */
	int64		max_count;
	bool		(*keep) (Datum aggregate_id, void *arg);	/* NULL: every aggregate */
	void	   *keep_arg;
	EsSlotCallback slot_fn;		/* NULL: none */
	/* Set by a read in the log. */
	int64		seq;			/* the row of the event handed to the callback */
	bool		log_ended;		/* it read every row there was */
	int64		end_seq;		/* then: the last row, and its last position */
	int64		end_position;
} EsCommitRead;

extern bool es_read_skips(const int64 *skip, int nskip, int64 position);
extern void es_read_commit_order(EsCommitRead *r, bool reveal, EsRowCallback fn, void *arg);

#endif							/* ES_READ_H */
