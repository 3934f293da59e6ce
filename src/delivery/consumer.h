/*-------------------------------------------------------------------------
 *
 * consumer.h
 *	  Consumers: commit-order readers of the store run by the workers
 *	  (handlers, async projections).  The engine that runs one batch of
 *	  one consumer (consumer.c), the checks of the consumer catalog shared
 *	  by handlers and projections (consumer_catalog.c), and the worker
 *	  service that serves them (delivery.c).
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_CONSUMER_H
#define ES_CONSUMER_H

#include "fmgr.h"
#include "utils/array.h"
#include "utils/timestamp.h"

#include "core/store.h"

/* consumer.c */
extern int	es_consumer_run(const char *name, int segments, int segment, TimestampTz *next_due);
extern bool es_consumer_delivering(Datum event);

/* segment.c; the most segments a consumer can have (es_handlers' CHECK on parallelism) */
#define ES_MAX_SEGMENTS	64
extern void es_segment_split(const char *name, int from, int to);
extern void es_segment_collect(void);

/* consumer_catalog.c */
extern char *es_arg_consumer_name(FunctionCallInfo fcinfo, int argno, const char *what);
extern void es_check_consumer_name_free(const char *name, const char *kind);
extern void es_check_consumer_function(Oid fn, const EsStore *s, Oid caller, const char *what);
extern void es_check_event_type_filter(ArrayType *types);
extern void es_check_retry_policy(int32 max_retries, Interval *backoff);
extern void es_check_timeout(Interval *timeout);
extern int64 es_retry_delay_us(int64 backoff_us, int attempts);
extern void es_consumer_record_failure(const char *name, const char *message);

/* delivery.c */
extern void es_delivery_init(void);

#endif							/* ES_CONSUMER_H */
