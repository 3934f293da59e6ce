/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  The shared memory of ultracore_es: a registry of the modules'
 *	  segments, requested while the library is preloaded and attached at
 *	  shared-memory startup.
 *
 * Each module (the append counters, the workers' latches, ...) asks for a
 * segment of its own from _PG_init with es_shmem_add, and keeps its own
 * locking rules; this file only sizes, names and initializes the segments.
 * Without preloading nothing is allocated and the modules' pointers stay
 * NULL.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "core/shmem.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"

#define MAX_SEGMENTS	8

typedef struct Segment
{
	const char *name;
	Size		(*size) (void);
	int			lwlocks;
	void	  **pointer;
	void		(*init) (void *segment);
} Segment;

static Segment segments[MAX_SEGMENTS];
static int	nsegments = 0;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

void
es_shmem_add(const char *name, Size (*size) (void), int lwlocks, void **segment, void (*init) (void *segment))
{
	*segment = NULL;
	if (!process_shared_preload_libraries_in_progress)
		return;
	if (nsegments == MAX_SEGMENTS)
		elog(ERROR, "too many ultracore_es shared memory segments");
	segments[nsegments].name = name;
	segments[nsegments].size = size;
	segments[nsegments].lwlocks = lwlocks;
	segments[nsegments].pointer = segment;
	segments[nsegments].init = init;
	nsegments++;
}

static void
shmem_request(void)
{
	int			i;

	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	for (i = 0; i < nsegments; i++)
	{
		RequestAddinShmemSpace(MAXALIGN(segments[i].size()));
		if (segments[i].lwlocks > 0)
			RequestNamedLWLockTranche(segments[i].name, segments[i].lwlocks);
	}
}

static void
shmem_startup(void)
{
	int			i;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	for (i = 0; i < nsegments; i++)
	{
		bool		found;
		Size		size = segments[i].size();
		void	   *segment = ShmemInitStruct(segments[i].name, size, &found);

		if (!found)
		{
			memset(segment, 0, size);
			if (segments[i].init != NULL)
				segments[i].init(segment);
		}
		*segments[i].pointer = segment;
	}
	LWLockRelease(AddinShmemInitLock);
}

/* es_shmem_init: from _PG_init, after the modules' es_shmem_add calls. */
void
es_shmem_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = shmem_startup;
}
