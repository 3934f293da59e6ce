/*-------------------------------------------------------------------------
 *
 * read_model.h
 *	  The built-in read models (read_model.c, read_model_fold.c), as the
 *	  projection engine (projection.c, projection_rebuild.c) drives them.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_READ_MODEL_H
#define ES_READ_MODEL_H

#include "access/htup.h"
#include "access/transam.h"
#include "access/tupdesc.h"
#include "core/store.h"
#include "utils/array.h"

typedef struct EsReadModel EsReadModel;
typedef struct EsReadModelRow EsReadModelRow;

/* The model maintained by built-in projection name; NULL when there is none. */
extern EsReadModel *es_read_model(const char *name);
extern EsReadModel *es_read_model_of_function(EsStore *s, Oid fn);
extern EsReadModelRow *es_read_model_begin(EsReadModel *m, EsStore *s, const char *aggregate_id);
extern bool es_read_model_fold_event(EsReadModelRow *r, TupleDesc desc, HeapTuple event);
extern int	es_read_model_end(EsReadModelRow *r);
extern int	es_read_model_apply(EsReadModel *m, EsStore *s, TupleDesc desc, HeapTuple *events,
								int nevents);
extern void es_read_model_reset(EsReadModel *m, const char *aggregate_id);
extern int64 es_read_model_rebuild(EsReadModel *m, ArrayType *event_types, const char *aggregate_id,
								   FullTransactionId bound_tx, int64 bound_position);

#endif							/* ES_READ_MODEL_H */
