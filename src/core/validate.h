/*-------------------------------------------------------------------------
 *
 * validate.h
 *	  Argument checks and defaults shared by the SQL-callable functions
 *	  (validate.c).  No locks, no catalog access.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_VALIDATE_H
#define ES_VALIDATE_H

#include "fmgr.h"
#include "datatype/timestamp.h"
#include "utils/jsonb.h"

extern char *es_arg_id(FunctionCallInfo fcinfo, int argno, const char *what, bool required);
extern char *es_arg_name(FunctionCallInfo fcinfo, int argno, const char *what, bool required);
extern void es_check_id(const char *value, const char *what);
extern void es_check_name(const char *value, const char *what);
extern void es_check_object(Jsonb *jb, const char *what);
extern void es_check_occurred_at(TimestampTz t, const char *what);
extern void es_check_metadata(Jsonb *jb, const char *what);
extern bool es_traceparent_valid(const char *value, const char **why);
extern bool es_tracestate_valid(const char *value);
extern void es_check_event_size(Jsonb *data, Jsonb *metadata, const char *event_id);

/*
 * A layer above that sends events on (the Kafka mirror) checks they fit
 * its limit too, after ultracore_es.max_event_bytes: it raises its own
 * error.  Set from _PG_init.
 */
typedef void (*es_event_size_check_hook_type) (Jsonb *data, Jsonb *metadata, const char *event_id);
extern PGDLLIMPORT es_event_size_check_hook_type es_event_size_check_hook;
extern int64 es_arg_expected_version(FunctionCallInfo fcinfo, int argno, bool *any);
extern Jsonb *es_empty_object(void);
extern void es_push_string(JsonbParseState **state, JsonbIteratorToken token, const char *str);

#endif							/* ES_VALIDATE_H */
