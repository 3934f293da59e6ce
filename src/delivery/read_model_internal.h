/*-------------------------------------------------------------------------
 *
 * read_model_internal.h
 *	  A built-in read model as its two files share it: the rows it loads,
 *	  folds and saves (read_model.c), and what each event does to a row
 *	  (read_model_fold.c).  Nothing else includes it.
 *
 * A model's column list is the order of its table's columns: the code reads
 * and writes a row by column number, and read_model.c checks the table
 * against the list before its first use in a store.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_READ_MODEL_INTERNAL_H
#define ES_READ_MODEL_INTERNAL_H

#include "catalog/pg_type.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "delivery/read_model.h"

#define RM_MAX_COLUMNS	ES_PLAN_MAX_ARGS

typedef struct RmColumn
{
	const char *name;
	Oid			type;
} RmColumn;

/* A row in memory: the column values, and whether it is stored yet. */
typedef struct RmRow
{
	Datum		values[RM_MAX_COLUMNS];
	bool		nulls[RM_MAX_COLUMNS];
	bool		exists;
} RmRow;

/* What a fold reads of an event. */
typedef struct RmEvent
{
	const char *event_id;
	const char *event_type;
	const char *aggregate_id;
	int64		version;
	int64		position;
	TimestampTz occurred_at;
	Jsonb	   *data;
} RmEvent;

struct EsReadModel
{
	const char *name;			/* the projection, e.g. es_accounts */
	const char *table;			/* its rows, e.g. es_rm_accounts */
	const RmColumn *columns;	/* [0] is the id; then the model's; then the last three */
	int			ncolumns;
	void		(*fold) (RmRow *row, const RmEvent *ev);
	/* filled on first use */
	bool		ready;
	uint32		store_generation;	/* of relid */
	Oid			relid;
	int16		typlen[RM_MAX_COLUMNS];
	bool		typbyval[RM_MAX_COLUMNS];
	EsPlan		insert_plan;
	EsPlan		update_plan;
	EsPlan		reset_one_plan;
	EsPlan		reset_all_plan;
};

/* Every model ends with these three columns. */
#define RM_COMMON_COLUMNS \
	{"updated_at", TIMESTAMPTZOID}, {"version", INT8OID}, {"last_position", INT8OID}
#define COL_UPDATED_AT(m)		((m)->ncolumns - 3)
#define COL_VERSION(m)			((m)->ncolumns - 2)
#define COL_LAST_POSITION(m)	((m)->ncolumns - 1)

/*
 * The models, in read_model_fold.c beside their folds; es_read_model
 * (read_model.c) looks them up by name and prepares their plans on first
 * use.
 */
extern EsReadModel es_read_models[];
extern const int es_nread_models;

#endif							/* ES_READ_MODEL_INTERNAL_H */
