/*-------------------------------------------------------------------------
 *
 * read_model.c
 *	  The built-in projections of the guide's five read models (customers,
 *	  accounts, transactions, payments, loans): loading a model's row,
 *	  folding events into it and saving it, for every path that applies
 *	  them; and the projection functions.  What each event does to a row
 *	  (the models' columns and folds) is in read_model_fold.c.
 *
 * Each model keeps one row per aggregate, keyed by the aggregate's id.  The
 * fold is plain C on a row held in memory (RmRow), and serves every path:
 *
 *	- the projection functions (es_project_accounts(event) and its siblings),
 *	  which the worker calls for async projections: load the row, fold the
 *	  event, write the row;
 *	- inline projections of an append: load the row once, fold the append's
 *	  events, write it once (one aggregate per append);
 *	- rebuilds: read the events ordered by aggregate and version, fold each
 *	  aggregate's events, write its row once.
 *
 * A row records the version of the last event folded into it; an event at or
 * below that version was folded before and is skipped, so that a repeated
 * delivery cannot count a payment twice.  An error in a fold names the
 * model and the event (rm_error_context); inline, it refuses the append.
 *
 * A row is read with a primary-key probe and written with saved plans
 * (store.c's EsPlan) built from the models' column lists, which must match
 * the tables of the extension script (checked).
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "delivery/read_model_internal.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "executor/tuptable.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"
#include "utils/typcache.h"
#include "utils/xid8.h"

#include "core/event.h"
#include "delivery/consumer.h"
#include "read/read.h"

/* Where the fold of the current event is, for error messages. */
typedef struct RmFoldContext
{
	const EsReadModel *model;
	const RmEvent *event;
} RmFoldContext;

static void
rm_error_context(void *arg)
{
	RmFoldContext *c = (RmFoldContext *) arg;

	errcontext("read model %s, event %s (%s, version " INT64_FORMAT " of %s)",
			   c->model->name, c->event->event_id, c->event->event_type, c->event->version,
			   c->event->aggregate_id);
}

/*-------------------------------------------------------------------------
 * Rows: load, fold, save
 *-------------------------------------------------------------------------
 */

/* Build a model's plans from its columns (once per backend). */
static void
rm_prepare(EsReadModel *m)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
	StringInfoData cols;
	StringInfoData params;
	StringInfoData sets;
	int			i;

	Assert(m->ncolumns <= RM_MAX_COLUMNS);
	initStringInfo(&cols);
	initStringInfo(&params);
	initStringInfo(&sets);
	for (i = 0; i < m->ncolumns; i++)
	{
		get_typlenbyval(m->columns[i].type, &m->typlen[i], &m->typbyval[i]);
		appendStringInfo(&cols, "%s%s", i ? ", " : "", m->columns[i].name);
		appendStringInfo(&params, "%s$%d", i ? ", " : "", i + 1);
		if (i > 0)
			appendStringInfo(&sets, "%s%s = $%d", i > 1 ? ", " : "", m->columns[i].name, i + 1);
		m->insert_plan.argtypes[i] = m->columns[i].type;
		m->update_plan.argtypes[i] = m->columns[i].type;
	}
	m->insert_plan.sql = psprintf("INSERT INTO @extschema@.%s (%s) VALUES (%s)",
								  m->table, cols.data, params.data);
	m->insert_plan.nargs = m->ncolumns;
	m->update_plan.sql = psprintf("UPDATE @extschema@.%s SET %s WHERE %s OPERATOR(pg_catalog.=) $1",
								  m->table, sets.data, m->columns[0].name);
	m->update_plan.nargs = m->ncolumns;
	m->reset_one_plan.sql = psprintf("DELETE FROM @extschema@.%s WHERE %s OPERATOR(pg_catalog.=) $1",
									 m->table, m->columns[0].name);
	m->reset_one_plan.nargs = 1;
	m->reset_one_plan.argtypes[0] = TEXTOID;
	m->reset_all_plan.sql = psprintf("DELETE FROM @extschema@.%s", m->table);
	m->reset_all_plan.nargs = 0;
	MemoryContextSwitchTo(old);
	m->ready = true;
}

static void
rm_row_init(const EsReadModel *m, RmRow *row, const char *aggregate_id)
{
	int			i;

	for (i = 0; i < m->ncolumns; i++)
		row->nulls[i] = true;
	row->values[0] = CStringGetTextDatum(aggregate_id);
	row->nulls[0] = false;
	row->values[COL_VERSION(m)] = Int64GetDatum(0);
	row->exists = false;
}

/* A model's table changed (ALTER TABLE): checked again at its next use. */
static void
rm_relcache_callback(Datum arg, Oid relid)
{
	int			i;

	for (i = 0; i < es_nread_models; i++)
		if (relid == InvalidOid || relid == es_read_models[i].relid)
			es_read_models[i].relid = InvalidOid;
}

/*
 * The table of m in store s, checked against the column list (the code
 * reads and writes rows by column number, as of their types).
 */
static Oid
rm_relation(EsReadModel *m, EsStore *s)
{
	static bool callback_registered = false;
	int			i;

	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(rm_relcache_callback, (Datum) 0);
		callback_registered = true;
	}
	if (OidIsValid(m->relid) && m->store_generation == s->generation)
		return m->relid;
	m->relid = get_relname_relid(m->table, s->nspid);
	if (!OidIsValid(m->relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table \"%s\" of ultracore_es does not exist", m->table),
				 errhint("The extension is damaged: run ALTER EXTENSION ultracore_es UPDATE, or recreate it.")));
	for (i = 0; i < m->ncolumns; i++)
	{
		char	   *attname = get_attname(m->relid, i + 1, true);
		Oid			atttype = attname ? get_atttype(m->relid, i + 1) : InvalidOid;

		if (attname == NULL || strcmp(attname, m->columns[i].name) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("column %d of %s is \"%s\", expected \"%s\"",
							i + 1, m->table, attname ? attname : "(dropped)", m->columns[i].name),
					 errhint("The table was altered outside the extension's scripts; restore its definition.")));
		/* Its values are read and written as of that type: another would crash the server. */
		if (atttype != m->columns[i].type)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("column \"%s\" of %s is of type %s, expected %s",
							attname, m->table, format_type_be(atttype), format_type_be(m->columns[i].type)),
					 errhint("The table was altered outside the extension's scripts; restore its definition.")));
	}
	m->store_generation = s->generation;
	return m->relid;
}

/*
 * The stored row of aggregate_id, copied into the current context; or a
 * new one.  A primary-key probe with SnapshotSelf, without the executor (this
 * is on the write path of inline projections): nobody else writes the row
 * meanwhile (see rm_save), so the committed row plus our own changes is the
 * row.
 */
static void
rm_load(EsReadModel *m, EsStore *s, RmRow *row, const char *aggregate_id)
{
	Relation	rel = table_open(rm_relation(m, s), RowExclusiveLock);
	Relation	idx = index_open(RelationGetPrimaryKeyIndex(rel), AccessShareLock);
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	ScanKeyData key;
	IndexScanDesc scan;
	int			i;

	rm_row_init(m, row, aggregate_id);
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_TEXTEQ, CStringGetTextDatum(aggregate_id));
	key.sk_collation = C_COLLATION_OID;
	CommandCounterIncrement();	/* see what this transaction wrote before */
	scan = index_beginscan(rel, idx, SnapshotSelf, 1, 0);
	index_rescan(scan, &key, 1, NULL, 0);
	if (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		slot_getallattrs(slot);
		for (i = 0; i < m->ncolumns; i++)
		{
			row->nulls[i] = slot->tts_isnull[i];
			row->values[i] = row->nulls[i] ? (Datum) 0
				: datumCopy(slot->tts_values[i], m->typbyval[i], m->typlen[i]);
		}
		row->exists = true;
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(idx, NoLock);
	table_close(rel, NoLock);
}

/*
 * Write the row back: an UPDATE of the row loaded, or an INSERT of a new
 * one.  Nobody else writes it meanwhile: inline, the append holds the
 * aggregate's lock; async, the worker is its only writer; rebuilds hold the
 * locks that keep both away (projection_rebuild.c).
 */
static void
rm_save(EsReadModel *m, RmRow *row)
{
	char		nulls[RM_MAX_COLUMNS];
	int			i;

	for (i = 0; i < m->ncolumns; i++)
		nulls[i] = row->nulls[i] ? 'n' : ' ';
	if (row->exists)
	{
		if (SPI_execute_plan(es_plan(&m->update_plan), row->values, nulls, false, 0) != SPI_OK_UPDATE ||
			SPI_processed != 1)
			elog(ERROR, "could not update %s row", m->name);
	}
	else if (SPI_execute_plan(es_plan(&m->insert_plan), row->values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not insert %s row", m->name);
	row->exists = true;
}

/* Fold one event into row, unless it was folded before; true when folded. */
static bool
rm_fold(const EsReadModel *m, RmRow *row, const RmEvent *ev)
{
	ErrorContextCallback errcallback;
	RmFoldContext c = {m, ev};

	if (ev->version <= DatumGetInt64(row->values[COL_VERSION(m)]))
		return false;
	errcallback.callback = rm_error_context;
	errcallback.arg = &c;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;
	m->fold(row, ev);
	error_context_stack = errcallback.previous;
	row->values[COL_UPDATED_AT(m)] = TimestampTzGetDatum(ev->occurred_at);
	row->nulls[COL_UPDATED_AT(m)] = false;
	row->values[COL_VERSION(m)] = Int64GetDatum(ev->version);
	row->nulls[COL_VERSION(m)] = false;
	row->values[COL_LAST_POSITION(m)] = Int64GetDatum(ev->position);
	row->nulls[COL_LAST_POSITION(m)] = false;
	return true;
}

static void
rm_event_from_values(RmEvent *ev, Datum *values, bool *nulls)
{
	static const struct
	{
		int			column;
		const char *name;
	}			required[] = {
		{EV_EVENT_ID, "event_id"}, {EV_EVENT_TYPE, "event_type"}, {EV_AGGREGATE_ID, "aggregate_id"},
		{EV_VERSION, "version"}, {EV_POSITION, "position"}, {EV_OCCURRED_AT, "occurred_at"}, {EV_DATA, "data"}
	};
	size_t		i;

	/* A stored event has them all (NOT NULL): a guard, never a path taken. */
	for (i = 0; i < lengthof(required); i++)
		if (nulls[required[i].column])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("event has no %s", required[i].name)));
	ev->event_id = TextDatumGetCString(values[EV_EVENT_ID]);
	ev->event_type = TextDatumGetCString(values[EV_EVENT_TYPE]);
	ev->aggregate_id = TextDatumGetCString(values[EV_AGGREGATE_ID]);
	ev->version = DatumGetInt64(values[EV_VERSION]);
	ev->position = DatumGetInt64(values[EV_POSITION]);
	ev->occurred_at = DatumGetTimestampTz(values[EV_OCCURRED_AT]);
	ev->data = DatumGetJsonbP(values[EV_DATA]);
}

/*-------------------------------------------------------------------------
 * Entry points
 *-------------------------------------------------------------------------
 */

EsReadModel *
es_read_model(const char *name)
{
	int			i;

	for (i = 0; i < es_nread_models; i++)
		if (strcmp(es_read_models[i].name, name) == 0)
		{
			if (!es_read_models[i].ready)
				rm_prepare(&es_read_models[i]);
			return &es_read_models[i];
		}
	return NULL;
}

/*
 * A row being folded: loaded by es_read_model_begin, given events of its
 * aggregate in version order by es_read_model_fold_event, written once by
 * es_read_model_end.  Lives in the caller's memory context.
 */
struct EsReadModelRow
{
	EsReadModel *model;
	RmRow		row;
	int			folded;
};

/* es_read_model_begin: load the row of aggregate_id (or a new one).  Needs SPI, as the store's owner. */
EsReadModelRow *
es_read_model_begin(EsReadModel *m, EsStore *s, const char *aggregate_id)
{
	EsReadModelRow *r = palloc(sizeof(EsReadModelRow));

	r->model = m;
	r->folded = 0;
	rm_load(m, s, &r->row, aggregate_id);
	return r;
}

/*
 * es_read_model_fold_event: fold one event (an es_events row of the row's
 * aggregate) into the row, unless it was folded before; true when folded.
 */
bool
es_read_model_fold_event(EsReadModelRow *r, TupleDesc desc, HeapTuple event)
{
	Datum		values[EV_NATTS];
	bool		nulls[EV_NATTS];
	RmEvent		ev;

	es_deform_event(event, desc, values, nulls);
	rm_event_from_values(&ev, values, nulls);
	if (!rm_fold(r->model, &r->row, &ev))
		return false;
	r->folded++;
	return true;
}

/* es_read_model_end: write the row, if an event was folded; returns how many were. */
int
es_read_model_end(EsReadModelRow *r)
{
	int			folded = r->folded;

	if (folded > 0)
		rm_save(r->model, &r->row);
	pfree(r);
	return folded;
}

/*
 * es_read_model_apply: fold events (es_events rows of one aggregate, in
 * version order) into the model's row, written once.  Returns how many were
 * folded (not skipped as folded before).  Needs SPI, as the store's owner.
 */
int
es_read_model_apply(EsReadModel *m, EsStore *s, TupleDesc desc, HeapTuple *events, int nevents)
{
	EsReadModelRow *r;
	Datum		id;
	bool		isnull;
	int			i;

	if (nevents == 0)
		return 0;
	id = heap_getattr(events[0], EV_AGGREGATE_ID + 1, desc, &isnull);
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("event has no aggregate_id")));
	r = es_read_model_begin(m, s, TextDatumGetCString(id));
	for (i = 0; i < nevents; i++)
		(void) es_read_model_fold_event(r, desc, events[i]);
	return es_read_model_end(r);
}

/* es_read_model_reset: delete the rows of one aggregate, or all (NULL). */
void
es_read_model_reset(EsReadModel *m, const char *aggregate_id)
{
	Datum		arg;

	if (aggregate_id == NULL)
	{
		if (SPI_execute_plan(es_plan(&m->reset_all_plan), NULL, NULL, false, 0) != SPI_OK_DELETE)
			elog(ERROR, "could not reset %s", m->name);
		return;
	}
	arg = CStringGetTextDatum(aggregate_id);
	if (SPI_execute_plan(es_plan(&m->reset_one_plan), &arg, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not reset %s row \"%s\"", m->name, aggregate_id);
}

/* The events of a rebuild, by aggregate and version, up to a commit-order bound. */
static EsPlan rebuild_plan = {
	"SELECT e.* FROM @extschema@.es_events e"
	" WHERE e.event_type OPERATOR(pg_catalog.=) ANY ($1)"
	"   AND ($2::pg_catalog.text IS NULL OR e.aggregate_id OPERATOR(pg_catalog.=) $2)"
	"   AND ROW(e.tx_id, e.position) OPERATOR(pg_catalog.<=) ROW($3, $4)"
	" ORDER BY e.aggregate_id, e.version",
	4, {TEXTARRAYOID, TEXTOID, XID8OID, INT8OID}
};

typedef struct RmRebuild
{
	EsReadModel *model;
	MemoryContext event_cxt;	/* reset after each event */
	MemoryContext row_cxt[2];	/* the row lives in one, is copied to the other */
	int			current;
	RmRow		row;
	bool		started;
	char		aggregate_id[ES_MAX_ID_LEN + 1];
	int64		folded;
} RmRebuild;

/* Copy the row into the other row context and empty the one it was in. */
static void
rm_rebuild_keep_row(RmRebuild *r)
{
	EsReadModel *m = r->model;
	int			next = 1 - r->current;
	MemoryContext old = MemoryContextSwitchTo(r->row_cxt[next]);
	int			i;

	for (i = 0; i < m->ncolumns; i++)
		if (!r->row.nulls[i])
			r->row.values[i] = datumCopy(r->row.values[i], m->typbyval[i], m->typlen[i]);
	MemoryContextSwitchTo(old);
	MemoryContextReset(r->row_cxt[r->current]);
	r->current = next;
}

static void
rm_rebuild_event(Datum *values, bool *nulls, void *arg)
{
	RmRebuild  *r = (RmRebuild *) arg;
	MemoryContext old = MemoryContextSwitchTo(r->event_cxt);
	RmEvent		ev;

	rm_event_from_values(&ev, values, nulls);
	if (!r->started || strcmp(r->aggregate_id, ev.aggregate_id) != 0)
	{
		if (r->started)
			rm_save(r->model, &r->row);
		r->started = true;
		strlcpy(r->aggregate_id, ev.aggregate_id, sizeof(r->aggregate_id));
		rm_row_init(r->model, &r->row, ev.aggregate_id);
	}
	if (rm_fold(r->model, &r->row, &ev))
		r->folded++;
	rm_rebuild_keep_row(r);
	MemoryContextSwitchTo(old);
	MemoryContextReset(r->event_cxt);
}

/*
 * es_read_model_rebuild: fold the events of event_types up to (bound_tx,
 * bound_position) in commit order into the model's rows of one aggregate (or
 * all, NULL), which the caller deleted first; each row written once.
 * Returns the number of events folded.  The caller holds the locks that keep
 * the rows from moving meanwhile (projection_rebuild.c).
 */
int64
es_read_model_rebuild(EsReadModel *m, ArrayType *event_types, const char *aggregate_id,
					  FullTransactionId bound_tx, int64 bound_position)
{
	RmRebuild	r;
	Datum		args[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};

	memset(&r, 0, sizeof(r));
	r.model = m;
	r.event_cxt = AllocSetContextCreate(CurrentMemoryContext, "ultracore_es rebuilt event",
										ALLOCSET_DEFAULT_SIZES);
	r.row_cxt[0] = AllocSetContextCreate(CurrentMemoryContext, "ultracore_es rebuilt row",
										 ALLOCSET_SMALL_SIZES);
	r.row_cxt[1] = AllocSetContextCreate(CurrentMemoryContext, "ultracore_es rebuilt row",
										 ALLOCSET_SMALL_SIZES);
	args[0] = PointerGetDatum(event_types);
	args[1] = aggregate_id ? CStringGetTextDatum(aggregate_id) : (Datum) 0;
	nulls[1] = aggregate_id ? ' ' : 'n';
	args[2] = FullTransactionIdGetDatum(bound_tx);
	args[3] = Int64GetDatum(bound_position);
	es_read_rows(&rebuild_plan, args, nulls, false, false, NULL, rm_rebuild_event, &r);
	if (r.started)
		rm_save(m, &r.row);
	MemoryContextDelete(r.event_cxt);
	MemoryContextDelete(r.row_cxt[0]);
	MemoryContextDelete(r.row_cxt[1]);
	return r.folded;
}

/*
 * The projection functions: fold one event (an es_events row) into the
 * model's row, as the owner of the store.  They are the async projections'
 * functions, and fold only the stored event a delivery worker passes them:
 * a row made up by a caller would write read-model rows no event backs.
 * Inline projections and rebuilds fold the events in C, without them.
 */
static Datum
rm_project_one(FunctionCallInfo fcinfo, const char *model)
{
	HeapTupleHeader th;
	HeapTupleData tuple;
	HeapTuple	events[1];
	TupleDesc	desc;
	EsReadModel *m;
	EsCall		call;

	if (PG_ARGISNULL(0) || !es_consumer_delivering(PG_GETARG_DATUM(0)))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("%s() folds only the events a delivery worker passes it",
						get_func_name(fcinfo->flinfo->fn_oid)),
				 errdetail("The rows of read model %s come from stored events only.", model),
				 errhint("Register the projection (es_register_projection('%s')) or rebuild it (es_rebuild_projection('%s')).",
						 model, model)));
	th = PG_GETARG_HEAPTUPLEHEADER(0);
	es_call_begin(fcinfo, &call);
	m = es_read_model(model);
	desc = lookup_rowtype_tupdesc(call.store->events_rowtype, -1);
	tuple.t_len = HeapTupleHeaderGetDatumLength(th);
	ItemPointerSetInvalid(&tuple.t_self);
	tuple.t_tableOid = InvalidOid;
	tuple.t_data = th;
	events[0] = &tuple;
	(void) es_read_model_apply(m, call.store, desc, events, 1);
	ReleaseTupleDesc(desc);
	es_call_end(&call);
	PG_RETURN_VOID();
}

/*
 * es_read_model_of_function: the model whose projection function (above) fn
 * is, or NULL.  Such a function takes events with their personal fields
 * sealed (the read models keep them so; their views reveal them), and a
 * consumer calling it may fold its events in C, a row per run of events of
 * one aggregate (consumer.c).
 */
EsReadModel *
es_read_model_of_function(EsStore *s, Oid fn)
{
	const char *prefix = "es_project_";
	char	   *name;

	if (get_func_namespace(fn) != s->nspid || (name = get_func_name(fn)) == NULL ||
		strncmp(name, prefix, strlen(prefix)) != 0)
		return NULL;
	return es_read_model(psprintf("es_%s", name + strlen(prefix)));
}

PG_FUNCTION_INFO_V1(es_project_customers);
Datum
es_project_customers(PG_FUNCTION_ARGS)
{
	return rm_project_one(fcinfo, "es_customers");
}

PG_FUNCTION_INFO_V1(es_project_accounts);
Datum
es_project_accounts(PG_FUNCTION_ARGS)
{
	return rm_project_one(fcinfo, "es_accounts");
}

PG_FUNCTION_INFO_V1(es_project_transactions);
Datum
es_project_transactions(PG_FUNCTION_ARGS)
{
	return rm_project_one(fcinfo, "es_transactions");
}

PG_FUNCTION_INFO_V1(es_project_payments);
Datum
es_project_payments(PG_FUNCTION_ARGS)
{
	return rm_project_one(fcinfo, "es_payments");
}

PG_FUNCTION_INFO_V1(es_project_loans);
Datum
es_project_loans(PG_FUNCTION_ARGS)
{
	return rm_project_one(fcinfo, "es_loans");
}
