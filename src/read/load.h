/*-------------------------------------------------------------------------
 *
 * load.h
 *	  An aggregate's state, folded from its latest usable snapshot and the
 *	  events after it (load.c).
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_LOAD_H
#define ES_LOAD_H

#include "core/event.h"
#include "core/store.h"
#include "nodes/pg_list.h"
#include "read/read.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

typedef struct EsAggregateState
{
	char		aggregate_type[ES_MAX_NAME_LEN + 1];	/* "" when it does not exist */
	Jsonb	   *state;			/* NULL at version 0 */
	int64		version;
	int64		snapshot_version;	/* 0: folded from the first event */
	int64		events_applied;
	List	   *subjects;		/* whose personal data the state holds, sorted */
} EsAggregateState;

extern bool es_aggregate_head(const char *aggregate_id, bool read_only, char *type,
							  int64 *current);
extern void es_load_state(EsStore *s, const char *aggregate_id, int64 at_version,
						  const EsReadUntil *until, bool read_only, bool use_snapshots,
						  EsAggregateState *out);

extern List *es_snapshot_subjects(Datum d, bool isnull);

#endif							/* ES_LOAD_H */
