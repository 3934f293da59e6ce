/*-------------------------------------------------------------------------
 *
 * event.h
 *	  The shape of an event as every layer sees it: the columns of
 *	  es_events, the limits on identifiers and the expected-version
 *	  sentinels.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_EVENT_H
#define ES_EVENT_H

#include "access/htup_details.h"

/*
 * Columns of es_events, 0-based, in the order of the install script.  Code
 * that reads or writes rows by position uses these; the store checks the
 * relation's column names once per resolution (store.c).
 */
typedef enum EsEventColumn
{
	EV_EVENT_ID, EV_EVENT_TYPE, EV_AGGREGATE_TYPE, EV_AGGREGATE_ID, EV_VERSION, EV_POSITION,
	EV_TX_ID, EV_OCCURRED_AT, EV_RECORDED_AT, EV_CAUSATION_ID, EV_CORRELATION_ID, EV_DATA,
	EV_METADATA, EV_SCHEMA_VERSION, EV_APPENDED_BY, EV_HASH, EV_NATTS
} EsEventColumn;

/*
 * es_deform_event: deform an es_events row into values/isnull[EV_NATTS].  A
 * row of a 1.0 catalog, not updated yet, has no hash column: NULL.
 */
static inline void
es_deform_event(HeapTuple tup, TupleDesc desc, Datum *values, bool *isnull)
{
	if (desc->natts != EV_NATTS && desc->natts != EV_HASH)
		elog(ERROR, "es_events rows have %d columns, expected %d", desc->natts, EV_NATTS);
	heap_deform_tuple(tup, desc, values, isnull);
	if (desc->natts == EV_HASH)
	{
		values[EV_HASH] = (Datum) 0;
		isnull[EV_HASH] = true;
	}
}

/* Lengths, in bytes, beyond which an identifier is refused. */
#define ES_MAX_ID_LEN		255		/* event, aggregate, causation, correlation ids */
#define ES_MAX_NAME_LEN		128		/* event type and aggregate type names */
#define ES_MAX_BATCH_EVENTS	1000000	/* events of one es_append_batch (its arrays stay below 1 GB) */

/*
 * expected_version sentinels (NULL means "any version"):
 *	0	the aggregate must not exist yet
 *	-1	the aggregate must already exist, whatever its version
 */
#define ES_EXPECT_NEW		0
#define ES_EXPECT_EXISTS	(-1)

#endif							/* ES_EVENT_H */
