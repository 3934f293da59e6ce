/*-------------------------------------------------------------------------
 *
 * projection_internal.h
 *	  A projection as its two files share it: how one is looked up and
 *	  called (projection.c), for the registrations and rebuilds
 *	  (projection_rebuild.c).  Nothing else includes it.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_PROJECTION_INTERNAL_H
#define ES_PROJECTION_INTERNAL_H

#include "fmgr.h"
#include "utils/array.h"

#include "delivery/projection.h"
#include "delivery/read_model.h"

/* A projection as the write path, the rebuilds and the waits need it. */
typedef struct Projection
{
	char		name[NAMEDATALEN];
	int32		id;				/* the object its rebuilds lock */
	bool		inline_mode;
	EsReadModel *model;			/* built in: folded in C; else NULL */
	Oid			function;
	Oid			reset_function; /* InvalidOid: none */
	Oid			run_as;
	ArrayType  *event_types;	/* NULL: every type */
	int			ntypes;
	char	  **types;
	FmgrInfo	flinfo;			/* function, when not built in */
} Projection;

/* projection.c */
extern bool es_projection_takes(const Projection *p, const char *event_type);
extern void es_projection_call(const Projection *p, FmgrInfo *fn, Datum arg, bool isnull);
extern bool es_projection_lock(const char *name, Projection *p);
extern void es_projection_must_exist(const char *name, Projection *p);

#endif							/* ES_PROJECTION_INTERNAL_H */
