/*-------------------------------------------------------------------------
 *
 * personal_data.h
 *	  Personal fields of events, sealed on append with their subject's key
 *	  and revealed on read (personal_data.c).
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_PERSONAL_DATA_H
#define ES_PERSONAL_DATA_H

#include "access/htup.h"
#include "access/tupdesc.h"
#include "core/store.h"
#include "nodes/pg_list.h"
#include "utils/jsonb.h"

extern void es_personal_data_init(void);
extern bool es_personal_seal(EsStore *s, const char *event_type, const char *aggregate_id,
							 Jsonb *data, Jsonb *metadata, Jsonb **sealed_data, Jsonb **sealed_metadata);
extern const char *es_personal_subject(Jsonb *metadata);
extern Jsonb *es_personal_revealed(EsStore *s, Jsonb *data, Jsonb *metadata);
extern Jsonb *es_personal_omitted(Jsonb *data, Jsonb *metadata);
extern bool es_personal_reveal_row(EsStore *s, Datum *values, bool *isnull);
extern HeapTuple es_personal_revealed_tuple(EsStore *s, TupleDesc desc, HeapTuple row);

/* Snapshots of states folded from personal data: sealed with all their subjects' keys. */
extern Jsonb *es_personal_seal_state(EsStore *s, Jsonb *state, List *subjects);
extern Jsonb *es_personal_unseal_state(EsStore *s, Jsonb *sealed, List *subjects);

#endif							/* ES_PERSONAL_DATA_H */
