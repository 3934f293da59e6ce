/*-------------------------------------------------------------------------
 *
 * projection.c
 *	  Projections: functions that fold events into read models, run inline
 *	  (in the transaction of the append, listening to the write path) or
 *	  async (by the worker's consumer engine, consumer.c, like a handler).
 *	  What a projection is and how it is called, the inline path of
 *	  appends, and read-your-writes waits.  Registering, rebuilding and
 *	  unregistering projections, which replay the store into their rows, are
 *	  in projection_rebuild.c.
 *
 * A projection is function(event es_events), called once per event of its
 * event types in each aggregate's version order, as the role that
 * registered it.  The built-in ones (read_model.c) fold the guide's five read
 * models in C.  A projection can be rebuilt from the store when it can be
 * reset: the built-in ones always, others with a reset_function(aggregate_id
 * text) that deletes the rows of one aggregate, or all with NULL.
 *
 * Locking, so that a read model never misses or doubles an event (the
 * appends' side is here, the side of what changes a projection in
 * projection_rebuild.c):
 *
 *	- Appends run the inline projections they find in a backend cache,
 *	  refreshed by relcache invalidations of es_projections.  An append opens
 *	  es_events (RowExclusiveLock) before it reads the cache, and a backend
 *	  accepts invalidations when it takes a lock it did not hold.  Whatever
 *	  adds, removes or changes an inline projection takes ShareLock on
 *	  es_events first: it waits for the appends under way, and appends wait
 *	  for it to commit, after which they see the change.
 *	- Each inline projection has a lock of its own (on the object
 *	  es_projections/id).  Appends take it in RowExclusiveLock before
 *	  running the projection; a rebuild of all its rows takes ExclusiveLock:
 *	  it waits for the appends under way and holds off new ones (of that
 *	  projection's event types only) until it commits.  A rebuild of one
 *	  aggregate locks that aggregate, as an append does.
 *	- An async projection's consumer row is locked by its rebuild; the worker
 *	  skips a locked consumer.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "delivery/projection_internal.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/xid8.h"

#include "core/event.h"
#include "delivery/consumer.h"
#include "delivery/read_model.h"
#include "privacy/personal_data.h"
#include "delivery/stats.h"
#include "write/append.h"

/* How often es_wait_for_projection looks again. */
#define WAIT_POLL_MS	5

/*-------------------------------------------------------------------------
 * Calling a projection
 *-------------------------------------------------------------------------
 */

/* Whether event_type is one of p's. */
bool
es_projection_takes(const Projection *p, const char *event_type)
{
	int			i;

	if (p->event_types == NULL)
		return true;
	for (i = 0; i < p->ntypes; i++)
		if (strcmp(p->types[i], event_type) == 0)
			return true;
	return false;
}

/*
 * Call fn(arg) as p's role, in a restricted security context, with the
 * settings it changes undone afterwards (so that they do not leak into the
 * appending session or into the next projection).  fn is p's function or
 * its reset function.
 */
void
es_projection_call(const Projection *p, FmgrInfo *fn, Datum arg, bool isnull)
{
	LOCAL_FCINFO(fcinfo, 1);
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;

	InitFunctionCallInfoData(*fcinfo, fn, 1, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = arg;
	fcinfo->args[0].isnull = isnull;
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(p->run_as,
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	save_nestlevel = NewGUCNestLevel();
	(void) FunctionCallInvoke(fcinfo);	/* the result, void or not, is ignored */
	AtEOXact_GUC(false, save_nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec_context);
}

/* Apply events (rows of desc, one aggregate, version order) with p. */
static void
projection_apply(Projection *p, EsStore *s, TupleDesc desc, HeapTuple *events, int nevents)
{
	int			i;

	if (p->model != NULL)
	{
		(void) es_read_model_apply(p->model, s, desc, events, nevents);
		return;
	}
	/* A projection function reads the events: their personal fields revealed. */
	for (i = 0; i < nevents; i++)
		es_projection_call(p, &p->flinfo,
						   heap_copy_tuple_as_datum(es_personal_revealed_tuple(s, desc, events[i]), desc), false);
}

static void
projection_fill(Projection *p, HeapTuple row, TupleDesc desc, MemoryContext cxt)
{
	bool		isnull;
	Datum		d;
	char	   *mode;
	MemoryContext old = MemoryContextSwitchTo(cxt);

	memset(p, 0, sizeof(*p));
	strlcpy(p->name, TextDatumGetCString(SPI_getbinval(row, desc, 1, &isnull)), NAMEDATALEN);
	p->id = DatumGetInt32(SPI_getbinval(row, desc, 2, &isnull));
	p->function = DatumGetObjectId(SPI_getbinval(row, desc, 3, &isnull));
	d = SPI_getbinval(row, desc, 4, &isnull);
	if (!isnull)
	{
		Datum	   *elems;
		int			i;

		p->event_types = DatumGetArrayTypePCopy(d);
		deconstruct_array(p->event_types, TEXTOID, -1, false, TYPALIGN_INT, &elems, NULL, &p->ntypes);
		p->types = palloc(sizeof(char *) * Max(p->ntypes, 1));
		for (i = 0; i < p->ntypes; i++)
			p->types[i] = TextDatumGetCString(elems[i]);
	}
	mode = TextDatumGetCString(SPI_getbinval(row, desc, 5, &isnull));
	p->inline_mode = (strcmp(mode, "inline") == 0);
	d = SPI_getbinval(row, desc, 6, &isnull);
	p->reset_function = isnull ? InvalidOid : DatumGetObjectId(d);
	p->run_as = DatumGetObjectId(SPI_getbinval(row, desc, 7, &isnull));
	/* A built-in one is folded in C, by its model: es_builtin_projections must name one. */
	if (DatumGetBool(SPI_getbinval(row, desc, 8, &isnull)) && (p->model = es_read_model(p->name)) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("es_builtin_projections names projection \"%s\", which is not a read model of the library", p->name),
				 errhint("The table was changed outside the extension's scripts; restore its rows.")));
	if (p->model == NULL)
		fmgr_info_cxt(p->function, &p->flinfo, cxt);
	MemoryContextSwitchTo(old);
}

#define PROJECTION_COLUMNS \
	"p.name, p.id, p.function, p.event_types, p.mode, p.reset_function, p.run_as," \
	" EXISTS (SELECT FROM @extschema@.es_builtin_projections b" \
	"          WHERE b.name OPERATOR(pg_catalog.=) p.name AND b.function OPERATOR(pg_catalog.=) p.function)"

/*-------------------------------------------------------------------------
 * The inline path of appends
 *-------------------------------------------------------------------------
 */

static EsPlan inline_plan = {
	"SELECT " PROJECTION_COLUMNS " FROM @extschema@.es_projections p"
	" WHERE p.mode OPERATOR(pg_catalog.=) 'inline' ORDER BY p.name",
	0, {InvalidOid}
};

static MemoryContext inline_cxt = NULL;
static Projection *inline_projections = NULL;
static int	ninline = 0;
static bool inline_valid = false;
static int	inline_in_use = 0;	/* project_inline calls under way */

/* es_store_on_change callback: es_projections changed. */
static void
projection_store_changed(const EsStore *store, Oid relid)
{
	if (relid == InvalidOid || relid == store->projections_relid)
		inline_valid = false;
}

static void
inline_cache_load(void)
{
	uint64		i;

	if (inline_in_use > 0 && inline_cxt != NULL)
		return;					/* a projection changed them: the next append reloads */
	if (inline_cxt == NULL)
		inline_cxt = AllocSetContextCreate(TopMemoryContext, "ultracore_es inline projections",
										   ALLOCSET_SMALL_SIZES);
	MemoryContextReset(inline_cxt);
	inline_projections = NULL;
	ninline = 0;
	if (SPI_execute_plan(es_plan(&inline_plan), NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the inline projections");
	if (SPI_processed > 0)
		inline_projections = MemoryContextAlloc(inline_cxt, sizeof(Projection) * SPI_processed);
	for (i = 0; i < SPI_processed; i++)
		projection_fill(&inline_projections[i], SPI_tuptable->vals[i], SPI_tuptable->tupdesc, inline_cxt);
	ninline = (int) SPI_processed;
	SPI_freetuptable(SPI_tuptable);
	inline_valid = true;
}

/*
 * Whether appends have inline projections to run: the write path asks once
 * es_events is open for writing (see the top of the file).  Needs SPI.
 */
static bool
inline_projections_exist(void)
{
	if (!inline_valid)
		inline_cache_load();
	return ninline > 0;
}

/*
 * Run the inline projections on the events an append just stored (rows of
 * desc, one aggregate, version order), in the append's transaction: an
 * error refuses the append.  Needs SPI, as the store's owner.
 */
static void
project_inline(EsStore *s, const EsAppendRequest *req, int64 base, TupleDesc desc, HeapTuple *events)
{
	int			nevents = req->nevents;
	HeapTuple  *taken;
	int			i;

	if (events == NULL || ninline == 0)
		return;
	taken = palloc(sizeof(HeapTuple) * nevents);

	inline_in_use++;
	PG_TRY();
	{
		for (i = 0; i < ninline; i++)
		{
			Projection *p = &inline_projections[i];
			int			n = 0;
			int			j;

			for (j = 0; j < nevents; j++)
			{
				bool		isnull;
				char	   *type = TextDatumGetCString(heap_getattr(events[j], EV_EVENT_TYPE + 1, desc, &isnull));

				if (es_projection_takes(p, type))
					taken[n++] = events[j];
			}
			if (n == 0)
				continue;
			LockDatabaseObject(s->projections_relid, (Oid) p->id, 0, RowExclusiveLock);
			projection_apply(p, s, desc, taken, n);
			es_stats_note_projected(p->name, n);
		}
	}
	PG_FINALLY();
	{
		inline_in_use--;
	}
	PG_END_TRY();
	pfree(taken);
}

static const EsAppendListener projection_listener = {
	.wants_rows = inline_projections_exist,
	.inserted = project_inline,
};

/* es_projection_init: from _PG_init; inline projections listen to the write path. */
void
es_projection_init(void)
{
	es_store_on_change(projection_store_changed);
	es_append_listen(&projection_listener);
}

/*-------------------------------------------------------------------------
 * Looking projections up
 *-------------------------------------------------------------------------
 */

static EsPlan lookup_plan = {
	"SELECT " PROJECTION_COLUMNS " FROM @extschema@.es_projections p"
	" WHERE p.name OPERATOR(pg_catalog.=) $1 FOR UPDATE OF p",
	1, {TEXTOID}
};

/* Lock and read projection name into *p (allocated in the current context); false when none. */
bool
es_projection_lock(const char *name, Projection *p)
{
	Datum		arg = CStringGetTextDatum(name);

	if (SPI_execute_plan(es_plan(&lookup_plan), &arg, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read projection \"%s\"", name);
	if (SPI_processed == 0)
		return false;
	projection_fill(p, SPI_tuptable->vals[0], SPI_tuptable->tupdesc, CurrentMemoryContext);
	SPI_freetuptable(SPI_tuptable);
	return true;
}

/* es_projection_lock, or an error when there is no such projection. */
void
es_projection_must_exist(const char *name, Projection *p)
{
	if (!es_projection_lock(name, p))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("projection \"%s\" does not exist", name),
				 errhint("See es_projection_status for the registered projections.")));
}

/*-------------------------------------------------------------------------
 * Read-your-writes
 *-------------------------------------------------------------------------
 */

/*
 * Besides the checkpoint: whether the consumer read the event in the commit
 * log (the rows up to where it is, from the first that may hold the event),
 * or before it fell back to the horizon (its skip set).
 */
static EsPlan progress_plan = {
	"SELECT p.mode, c.checkpoint_tx, c.checkpoint_position, ev.tx_id, ev.xmin,"
	"       $2 OPERATOR(pg_catalog.=) ANY (c.log_skip)"
	"       OR (c.log_seq IS NOT NULL AND ev.tx_id IS NOT NULL AND EXISTS ("
	"           SELECT FROM @extschema@.es_commit_log l"
	"            WHERE l.seq OPERATOR(pg_catalog.>=) (SELECT pg_catalog.min(m.seq) FROM @extschema@.es_commit_log m"
	"                                                  WHERE m.max_key OPERATOR(pg_catalog.>=) ev.tx_id)"
	"              AND l.seq OPERATOR(pg_catalog.<=) c.log_seq"
	"              AND $2 OPERATOR(pg_catalog.=) ANY (l.positions)"
	"              AND (l.seq OPERATOR(pg_catalog.<) c.log_seq OR $2 OPERATOR(pg_catalog.<=) c.log_position)))"
	"  FROM @extschema@.es_projections p"
	"  LEFT JOIN @extschema@.es_consumers c ON c.name OPERATOR(pg_catalog.=) p.name"
	"  LEFT JOIN LATERAL (SELECT e.tx_id, e.xmin FROM @extschema@.es_events e"
	"                      WHERE e.position OPERATOR(pg_catalog.=) $2) ev ON true"
	" WHERE p.name OPERATOR(pg_catalog.=) $1",
	2, {TEXTOID, INT8OID}
};

/*
 * Whether projection name has applied the event at position, judged on the
 * latest committed state.
 */
static bool
projection_passed(const char *name, int64 position)
{
	Datum		args[2];
	HeapTuple	row;
	TupleDesc	desc;
	bool		isnull;
	bool		tx_null;
	bool		passed;
	char	   *mode;
	FullTransactionId tx;

	args[0] = CStringGetTextDatum(name);
	args[1] = Int64GetDatum(position);
	PushActiveSnapshot(GetLatestSnapshot());
	if (SPI_execute_plan(es_plan(&progress_plan), args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the progress of projection \"%s\"", name);
	PopActiveSnapshot();
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("projection \"%s\" does not exist", name),
				 errhint("See es_projection_status for the registered projections.")));
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	mode = TextDatumGetCString(SPI_getbinval(row, desc, 1, &isnull));
	tx = DatumGetFullTransactionId(SPI_getbinval(row, desc, 4, &tx_null));
	if (!tx_null && strcmp(mode, "async") == 0 &&
		TransactionIdIsCurrentTransactionId(DatumGetTransactionId(SPI_getbinval(row, desc, 5, &isnull))))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the event at position " INT64_FORMAT " belongs to the current transaction", position),
				 errdetail("Projection \"%s\" is async: it applies the event after the transaction commits.", name),
				 errhint("Wait after COMMIT.")));
	if (tx_null)
		passed = false;			/* not committed yet, or no such position */
	else if (strcmp(mode, "inline") == 0)
		passed = true;			/* projected by the transaction that appended it */
	else
	{
		FullTransactionId ck_tx = DatumGetFullTransactionId(SPI_getbinval(row, desc, 2, &isnull));
		int64		ck_position = DatumGetInt64(SPI_getbinval(row, desc, 3, &isnull));

		bool		read_above = DatumGetBool(SPI_getbinval(row, desc, 6, &isnull)) && !isnull;

		passed = FullTransactionIdPrecedes(tx, ck_tx) ||
			(FullTransactionIdEquals(tx, ck_tx) && position <= ck_position) || read_above;
	}
	SPI_freetuptable(SPI_tuptable);
	return passed;
}

/*
 * es_wait_for_projection(name, position, timeout) returns boolean
 *
 * Read-your-writes: returns true once the projection has applied the event
 * at position (at once for an inline projection, when the event is
 * committed), false when timeout passes first.  Waiting for an event of the
 * current transaction is an error: it cannot be applied before the
 * transaction commits.
 */
PG_FUNCTION_INFO_V1(es_wait_for_projection);
Datum
es_wait_for_projection(PG_FUNCTION_ARGS)
{
	char	   *name = es_arg_consumer_name(fcinfo, 0, "projection name");
	int64		position;
	Interval   *timeout;
	TimestampTz deadline;
	EsCall		call;
	bool		passed;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("position must not be null")));
	position = PG_GETARG_INT64(1);
	if (position < 1)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("position must be positive")));
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("timeout must not be null")));
	timeout = PG_GETARG_INTERVAL_P(2);
	if (timeout->time < 0 || timeout->day < 0 || timeout->month < 0)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("timeout must not be negative")));
	deadline = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
													   TimestampTzGetDatum(GetCurrentTimestamp()),
													   IntervalPGetDatum(timeout)));

	es_call_begin(fcinfo, &call);
	for (;;)
	{
		passed = projection_passed(name, position);
		if (passed || GetCurrentTimestamp() >= deadline)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, WAIT_POLL_MS,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	es_call_end(&call);
	PG_RETURN_BOOL(passed);
}
