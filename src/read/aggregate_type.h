/*-------------------------------------------------------------------------
 *
 * aggregate_type.h
 *	  What each aggregate type is folded with, the fingerprint of that, and
 *	  its snapshot policy (aggregate_type.c).  A returned pointer is valid
 *	  until the next call.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_AGGREGATE_TYPE_H
#define ES_AGGREGATE_TYPE_H

#include "core/event.h"
#include "core/store.h"

typedef struct EsAggregateTypeInfo
{
	char		name[ES_MAX_NAME_LEN + 1];	/* hash key */
	bool		reducer_loaded;
	EsUserFunction reducer;		/* flinfo.fn_oid invalid: the default reducer */
	char	   *reducer_name;	/* as recorded in snapshots */
	char	   *fingerprint;	/* NULL until computed */
	bool		policy_loaded;
	int32		snapshot_every; /* 0: no automatic snapshots */
} EsAggregateTypeInfo;

extern void es_aggregate_type_init(void);
extern EsAggregateTypeInfo *es_aggregate_type_reducer(const char *aggregate_type);
extern const char *es_aggregate_type_fingerprint(const char *aggregate_type);
extern int32 es_aggregate_type_snapshot_every(const char *aggregate_type);
extern bool es_is_creation_event(const char *event_type);

#endif							/* ES_AGGREGATE_TYPE_H */
