/*-------------------------------------------------------------------------
 *
 * shmem.h
 *	  The shared memory of ultracore_es (shmem.c): one registry through
 *	  which each module asks, from _PG_init, for a segment of its own.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_SHMEM_H
#define ES_SHMEM_H

/*
 * es_shmem_add: while preloading, ask for a segment named name of size()
 * bytes (asked when shared memory is sized, when MaxBackends is known), and
 * for lwlocks LWLocks in a tranche of that name.  Once shared memory
 * exists, *segment points at it, zeroed, and init(segment) has run once (in
 * the postmaster, or the first process to attach).  Without preloading
 * *segment stays NULL: callers check it.
 */
extern void es_shmem_add(const char *name, Size (*size) (void), int lwlocks, void **segment,
						 void (*init) (void *segment));
extern void es_shmem_init(void);

#endif							/* ES_SHMEM_H */
