/*-------------------------------------------------------------------------
 *
 * event_type.h
 *	  The event-type catalog and its backend-local cache (event_type.c):
 *	  what the write path validates every event against, and where the
 *	  read paths find upcasters.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_EVENT_TYPE_H
#define ES_EVENT_TYPE_H

#include "core/event.h"
#include "core/store.h"

typedef struct EsEventType
{
	char		aggregate_type[ES_MAX_NAME_LEN + 1];	/* "" = any aggregate type */
	int32		schema_version;
} EsEventType;

extern void es_event_type_init(void);
extern void es_event_type_lookup(const char *event_type, EsEventType *out);
extern EsUserFunction *es_event_type_upcaster(const char *event_type, int32 from_version);

#endif							/* ES_EVENT_TYPE_H */
