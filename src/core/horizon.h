/*-------------------------------------------------------------------------
 *
 * horizon.h
 *	  Commit order (horizon.c): the keys appending transactions give their
 *	  events, and the commit horizon below which every event is committed.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_HORIZON_H
#define ES_HORIZON_H

#include "access/transam.h"
#include "utils/snapshot.h"

extern void es_horizon_init(void);
extern FullTransactionId es_horizon_key(void);
extern FullTransactionId es_commit_horizon_of(Snapshot snapshot);
extern FullTransactionId es_commit_horizon_push(void);
extern FullTransactionId es_commit_horizon_now(void);
extern void es_commit_horizon_wait(void);

#endif							/* ES_HORIZON_H */
