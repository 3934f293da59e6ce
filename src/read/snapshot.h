/*-------------------------------------------------------------------------
 *
 * snapshot.h
 *	  Snapshots of aggregate states (snapshot.c); automatic ones are taken
 *	  by listening to the write path.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_SNAPSHOT_H
#define ES_SNAPSHOT_H

extern void es_snapshot_init(void);

#endif							/* ES_SNAPSHOT_H */
