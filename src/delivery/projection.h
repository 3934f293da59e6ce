/*-------------------------------------------------------------------------
 *
 * projection.h
 *	  Projections (projection.c, projection_rebuild.c): the SQL functions
 *	  that register, rebuild and wait for them, and the inline path that
 *	  listens to the write path.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_PROJECTION_H
#define ES_PROJECTION_H

extern void es_projection_init(void);

#endif							/* ES_PROJECTION_H */
