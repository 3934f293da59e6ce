/*-------------------------------------------------------------------------
 *
 * load.c
 *	  An aggregate's state: the latest usable snapshot at or below the
 *	  wanted version, plus the fold of the events after it; es_load_aggregate.
 *
 * The fold applies the aggregate type's reducer to each event, upcast to the
 * current schema version.  A registered reducer is called once per event
 * with (state, event).  The default reducer (the guide's: a creating event
 * sets the state to its data, later events merge theirs) is applied without
 * a function call per event: the state's top-level pairs are collected, a
 * creating event clears them, and the object is built once at the end, the
 * last value of each key winning.  That keeps a load linear in the number of
 * events folded, whatever the size of the state.
 *
 * Loads start from a snapshot only when its fingerprint is the current one
 * (aggregate_type.c), so a snapshot made by another reducer or other
 * upcasters is never mixed with events folded by the current ones.
 *
 * Needs an SPI connection (es_call_begin).  Memory: the state and the event
 * payloads it refers to are allocated in SPI's procedure context; copy what
 * must outlive the connection (SPI_datumTransfer).
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "read/load.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"
#include "utils/typcache.h"

#include "core/validate.h"
#include "privacy/personal_data.h"
#include "read/aggregate_type.h"
#include "read/read.h"

typedef struct Fold
{
	const char *aggregate_id;
	bool		default_reducer;
	EsUserFunction reducer;		/* a copy: the cache may be rebuilt meanwhile */
	TupleDesc	event_desc;		/* es_events row type, for the reducer's argument */
	/* default reducer: the state's top-level pairs, later ones winning */
	JsonbValue *keys;
	JsonbValue *values;
	int			npairs;
	int			maxpairs;
	/* registered reducer */
	Datum		state;
	int64		applied;
	List	   *subjects;		/* whose personal data it folded, sorted */

	/*
	 * Memory, so that a fold takes the state's size and not the history's:
	 * cxt is the caller's (the subjects); the default reducer's pairs and
	 * the payloads they point into are in pairs_cxt, made anew from the
	 * state every FOLD_COMPACT_EVERY events; a registered reducer's state is
	 * in state_cxt, the previous one freed as each event is folded; what an
	 * event takes besides is in work_cxt, emptied after it.
	 */
	MemoryContext cxt;
	MemoryContext pairs_cxt;
	MemoryContext state_cxt;
	MemoryContext spare_cxt;
	MemoryContext work_cxt;
	int			merged;			/* events merged into the pairs since they were made */
} Fold;

#define FOLD_COMPACT_EVERY	1024

/* Add subject to a sorted list of distinct subjects. */
static List *
subjects_add(List *subjects, const char *subject)
{
	ListCell   *lc;
	int			i = 0;

	foreach(lc, subjects)
	{
		int			c = strcmp((const char *) lfirst(lc), subject);

		if (c == 0)
			return subjects;
		if (c > 0)
			break;
		i++;
	}
	return list_insert_nth(subjects, i, pstrdup(subject));
}

/* Add the top-level pairs of obj to the default reducer's state. */
static void
fold_merge(Fold *f, Jsonb *obj)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;

	if (!JB_ROOT_IS_OBJECT(obj))
		return;
	it = JsonbIteratorInit(&obj->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
		{
			if (f->npairs == f->maxpairs)
			{
				f->maxpairs = Max(16, f->maxpairs * 2);
				f->keys = repalloc(f->keys, sizeof(JsonbValue) * f->maxpairs);
				f->values = repalloc(f->values, sizeof(JsonbValue) * f->maxpairs);
			}
			f->keys[f->npairs] = v;
		}
		else if (tok == WJB_VALUE)
			f->values[f->npairs++] = v;
	}
}

/* Start the default reducer's pairs, in pairs_cxt, from obj (NULL: none). */
static void
fold_pairs_begin(Fold *f, Jsonb *obj)
{
	MemoryContext old = MemoryContextSwitchTo(f->pairs_cxt);

	f->npairs = 0;
	f->maxpairs = 16;
	f->keys = palloc(sizeof(JsonbValue) * f->maxpairs);
	f->values = palloc(sizeof(JsonbValue) * f->maxpairs);
	f->merged = 0;
	if (obj != NULL)
		fold_merge(f, obj);
	MemoryContextSwitchTo(old);
}

static Jsonb *fold_result(Fold *f);

/*
 * Make the pairs anew from the state they add up to: later pairs of a key
 * hide earlier ones, and the payloads they point into would otherwise be
 * kept for the whole fold.
 */
static void
fold_compact(Fold *f)
{
	MemoryContext old_pairs = f->pairs_cxt;
	MemoryContext old;
	Jsonb	   *state;

	f->pairs_cxt = AllocSetContextCreate(f->cxt, "ultracore_es fold state", ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(f->pairs_cxt);
	state = fold_result(f);
	MemoryContextSwitchTo(old);
	fold_pairs_begin(f, state);
	MemoryContextDelete(old_pairs);
}

static void
fold_init(Fold *f, EsStore *s, const char *aggregate_id, const char *aggregate_type, Jsonb *initial)
{
	EsAggregateTypeInfo *info = es_aggregate_type_reducer(aggregate_type);

	memset(f, 0, sizeof(*f));
	f->aggregate_id = aggregate_id;
	f->default_reducer = !OidIsValid(info->reducer.flinfo.fn_oid);
	f->cxt = CurrentMemoryContext;
	f->work_cxt = AllocSetContextCreate(f->cxt, "ultracore_es fold event", ALLOCSET_DEFAULT_SIZES);
	if (f->default_reducer)
	{
		f->pairs_cxt = AllocSetContextCreate(f->cxt, "ultracore_es fold state", ALLOCSET_DEFAULT_SIZES);
		fold_pairs_begin(f, initial);
	}
	else
	{
		f->state_cxt = AllocSetContextCreate(f->cxt, "ultracore_es fold state", ALLOCSET_DEFAULT_SIZES);
		f->spare_cxt = AllocSetContextCreate(f->cxt, "ultracore_es fold state", ALLOCSET_DEFAULT_SIZES);
		fmgr_info_copy(&f->reducer.flinfo, &info->reducer.flinfo, CurrentMemoryContext);
		f->reducer.owner = info->reducer.owner;
		f->event_desc = lookup_rowtype_tupdesc_copy(s->events_rowtype, -1);
		f->state = JsonbPGetDatum(initial != NULL ? initial : es_empty_object());
	}
}

/* es_read_stream callback: fold one event (deformed, upcast) into the state. */
static void
fold_apply(Datum *values, bool *nulls, void *arg)
{
	Fold	   *f = (Fold *) arg;
	MemoryContext caller = MemoryContextSwitchTo(f->work_cxt);
	const char *subject = es_personal_subject(DatumGetJsonbP(values[EV_METADATA]));

	/* A state folded from personal data is sealed in snapshots (snapshot.c). */
	if (subject != NULL)
	{
		MemoryContextSwitchTo(f->cxt);
		f->subjects = subjects_add(f->subjects, subject);
		MemoryContextSwitchTo(f->work_cxt);
	}
	if (f->default_reducer)
	{
		char		event_type[ES_MAX_NAME_LEN + 1];
		Jsonb	   *data;

		text_to_cstring_buffer(DatumGetTextPP(values[EV_EVENT_TYPE]), event_type, sizeof(event_type));
		if (es_is_creation_event(event_type))
			f->npairs = 0;
		/* The pairs point into the payload: keep a copy of it, with them. */
		MemoryContextSwitchTo(f->pairs_cxt);
		data = DatumGetJsonbPCopy(values[EV_DATA]);
		fold_merge(f, data);
		MemoryContextSwitchTo(f->work_cxt);
		if (++f->merged >= FOLD_COMPACT_EVERY)
			fold_compact(f);
	}
	else
	{
		HeapTuple	event = heap_form_tuple(f->event_desc, values, nulls);
		MemoryContext previous = f->state_cxt;
		bool		isnull;
		Datum		state;

		state = es_call_user_function(&f->reducer, f->state, HeapTupleGetDatum(event), &isnull);
		if (isnull)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("reducer %s returned NULL", format_procedure(f->reducer.flinfo.fn_oid)),
					 errdetail("Aggregate \"%s\", event version %lld.",
							   f->aggregate_id, (long long) DatumGetInt64(values[EV_VERSION])),
					 errhint("A reducer returns the whole new state, never NULL.")));
		/* The new state where the previous one is not, which then goes. */
		MemoryContextSwitchTo(f->spare_cxt);
		f->state = PointerGetDatum(PG_DETOAST_DATUM_COPY(state));
		MemoryContextReset(previous);
		f->state_cxt = f->spare_cxt;
		f->spare_cxt = previous;
	}
	MemoryContextSwitchTo(caller);
	MemoryContextReset(f->work_cxt);
	f->applied++;
}

static Jsonb *
fold_result(Fold *f)
{
	JsonbParseState *ps = NULL;
	JsonbValue *res;
	int			i;

	if (!f->default_reducer)
		return DatumGetJsonbP(f->state);
	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	for (i = 0; i < f->npairs; i++)
	{
		pushJsonbValue(&ps, WJB_KEY, &f->keys[i]);
		pushJsonbValue(&ps, WJB_VALUE, &f->values[i]);
	}
	/* Building the object sorts the keys; of equal keys the last pushed wins. */
	res = pushJsonbValue(&ps, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(res);
}

/*
 * The head: the last event's version; for an aggregate whose every event
 * was dropped (es_drop_history, which kept a snapshot at or after them),
 * its latest snapshot's.
 */
static EsPlan head_plan = {
	"SELECT a.aggregate_type,"
	"       coalesce((SELECT e.version FROM @extschema@.es_events e"
	"                  WHERE e.aggregate_id OPERATOR(pg_catalog.=) a.aggregate_id"
	"                  ORDER BY e.version DESC LIMIT 1),"
	"                (SELECT pg_catalog.max(t.version) FROM @extschema@.es_snapshots t"
	"                  WHERE t.aggregate_id OPERATOR(pg_catalog.=) a.aggregate_id))"
	"  FROM @extschema@.es_aggregates a"
	" WHERE a.aggregate_id OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}, true
};

/*
 * es_aggregate_head: the type (into type, ES_MAX_NAME_LEN + 1 bytes) and the
 * current version of an aggregate; false when it does not exist.
 */
bool
es_aggregate_head(const char *aggregate_id, bool read_only, char *type, int64 *current)
{
	Datum		arg = CStringGetTextDatum(aggregate_id);
	bool		isnull;

	if (SPI_execute_plan(es_plan(&head_plan), &arg, NULL, read_only, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read aggregate \"%s\"", aggregate_id);
	if (SPI_processed == 0)
		return false;
	text_to_cstring_buffer(DatumGetTextPP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)),
						   type, ES_MAX_NAME_LEN + 1);
	*current = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	if (isnull)
		*current = 0;
	SPI_freetuptable(SPI_tuptable);
	return true;
}

/*
 * The first event past a point in time: occurred after $2, or recorded
 * after $3 (NULL: no bound); and the first event in the database.
 */
static EsPlan first_later_plan = {
	"SELECT pg_catalog.min(e.version) FILTER (WHERE e.occurred_at OPERATOR(pg_catalog.>) $2"
	"                                           OR e.recorded_at OPERATOR(pg_catalog.>) $3),"
	"       pg_catalog.min(e.version)"
	"  FROM @extschema@.es_events e WHERE e.aggregate_id OPERATOR(pg_catalog.=) $1",
	3, {TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID}, true
};

/*
 * A state that would need events dropped from the database (es_drop_history)
 * that no snapshot covers: refused, rather than folded from what is left.
 */
static void
load_history_dropped(const char *aggregate_id, int64 target, const char *why)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("the state of aggregate \"%s\" at version %lld needs events dropped from the database",
					aggregate_id, (long long) target),
			 errdetail("%s", why),
			 errhint("Load the events back from their export (es_dropped_history), or register again the reducer and upcasters its latest snapshot was taken with.")));
}

#define SNAPSHOT_WHERE \
	" FROM @extschema@.es_snapshots s" \
	" WHERE s.aggregate_id OPERATOR(pg_catalog.=) $1" \
	"   AND s.version OPERATOR(pg_catalog.<=) $2" \
	"   AND s.fingerprint OPERATOR(pg_catalog.=) $3" \
	" ORDER BY s.version DESC LIMIT 1"

/* A 1.0 catalog's snapshots have no subjects: its plan. */
static EsPlan snapshot_1_0_plan = {
	"SELECT s.version, s.state, NULL::text[]" SNAPSHOT_WHERE,
	3, {TEXTOID, INT8OID, TEXTOID}, true
};

static EsPlan snapshot_plan = {
	"SELECT s.version, s.state, s.subjects" SNAPSHOT_WHERE,
	3, {TEXTOID, INT8OID, TEXTOID}, true
};

/* es_snapshot_subjects: a snapshot's subjects (a text[] Datum) as a list. */
List *
es_snapshot_subjects(Datum d, bool isnull)
{
	Datum	   *elems;
	int			n;
	int			i;
	List	   *subjects = NIL;

	if (isnull)
		return NIL;
	deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false, TYPALIGN_INT, &elems, NULL, &n);
	for (i = 0; i < n; i++)
		subjects = lappend(subjects, TextDatumGetCString(elems[i]));
	return subjects;
}

/*
 * es_load_state: the state of aggregate_id at at_version (-1: the current
 * one) and, with until, as it stood at a point in time (the events up to
 * the first that occurred, or was recorded, later).  An aggregate that does not exist, or did not
 * yet, has version 0 and no state.  With read_only, the queries use the
 * calling statement's snapshot; without, a new one that sees the current
 * command's own appends.  Without use_snapshots, every event is folded.
 */
void
es_load_state(EsStore *s, const char *aggregate_id, int64 at_version,
			  const EsReadUntil *until, bool read_only, bool use_snapshots,
			  EsAggregateState *out)
{
	Datum		args[3];
	bool		isnull;
	int64		current;
	int64		target;
	Jsonb	   *initial = NULL;
	List	   *subjects = NIL;
	Fold		fold;

	memset(out, 0, sizeof(*out));
	if (!es_aggregate_head(aggregate_id, read_only, out->aggregate_type, &current))
		return;
	args[0] = CStringGetTextDatum(aggregate_id);

	if (at_version > current)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("aggregate \"%s\" has no version %lld", aggregate_id, (long long) at_version),
				 errdetail("Its current version is %lld.", (long long) current)));
	target = at_version < 0 ? current : at_version;
	if (until != NULL && (until->has_end || until->has_as_of))
	{
		char		nulls[3] = {' ', until->has_end ? ' ' : 'n', until->has_as_of ? ' ' : 'n'};

		args[1] = TimestampTzGetDatum(until->end);
		args[2] = TimestampTzGetDatum(until->as_of);
		if (SPI_execute_plan(es_plan(&first_later_plan), args, nulls, read_only, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read aggregate \"%s\"", aggregate_id);
		{
			Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
			bool		none_kept;
			int64		first_kept = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2,
																&none_kept));

			if (!isnull)
			{
				target = Min(target, DatumGetInt64(d) - 1);

				/*
				 * The first event kept is already later: when the events
				 * before it were dropped, which of them came by then is
				 * not known.
				 */
				if (!none_kept && DatumGetInt64(d) == first_kept && first_kept > 1)
					load_history_dropped(aggregate_id, target,
										 "Its first events kept are past that time, and the ones before them were dropped: which of them came by then is not known.");
			}
			else if (none_kept && current > 0)
				load_history_dropped(aggregate_id, target,
									 "Every event of it was dropped: which of them came by then is not known.");
		}
		SPI_freetuptable(SPI_tuptable);
	}
	out->version = target;
	if (target == 0)
		return;

	args[1] = Int64GetDatum(target);
	args[2] = CStringGetTextDatum(es_aggregate_type_fingerprint(out->aggregate_type));
	if (use_snapshots)
	{
		if (SPI_execute_plan(es_plan(OidIsValid(s->personal_data_relid) ? &snapshot_plan : &snapshot_1_0_plan),
							 args, NULL, read_only, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read the snapshots of aggregate \"%s\"", aggregate_id);
		if (SPI_processed == 1)
		{
			HeapTuple	row = SPI_tuptable->vals[0];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			Datum		d = SPI_getbinval(row, desc, 3, &isnull);

			subjects = es_snapshot_subjects(d, isnull);
			initial = es_personal_unseal_state(s, DatumGetJsonbPCopy(SPI_getbinval(row, desc, 2, &isnull)),
											   subjects);
			/* Sealed with a key since forgotten: no use, fold from the first event. */
			if (initial != NULL)
				out->snapshot_version = DatumGetInt64(SPI_getbinval(row, desc, 1, &isnull));
		}
		SPI_freetuptable(SPI_tuptable);
	}

	fold_init(&fold, s, aggregate_id, out->aggregate_type, initial);
	if (initial != NULL)
		fold.subjects = subjects;
	if (target > out->snapshot_version)
		es_read_stream(aggregate_id, out->snapshot_version + 1, target, read_only, NULL,
					   fold_apply, NULL, &fold);
	/* Events missing at the end: dropped, with no snapshot serving after them. */
	if (fold.applied != target - out->snapshot_version)
		load_history_dropped(aggregate_id, target,
							 psprintf("Versions %lld to %lld are not in the database, and no snapshot at or after them serves the aggregate type's current reducer and upcasters (or the subject of its personal data was forgotten).",
									  (long long) (out->snapshot_version + fold.applied + 1), (long long) target));
	out->state = fold_result(&fold);
	out->events_applied = fold.applied;
	out->subjects = fold.subjects;
}

/*
 * es_load_aggregate(aggregate_id, at_version, at_time, as_of) returns es_aggregate_state
 *
 * The guide's replay and point-in-time recovery: the state of the aggregate
 * now, at a version, as it stood at a time (at_time: by when its events
 * occurred), or as the store knew it then (as_of: by when they were
 * recorded), with the version it is at, the snapshot it started from (NULL:
 * none) and the number of events folded.  The 1.0 catalog's function has
 * no as_of.
 */
PG_FUNCTION_INFO_V1(es_load_aggregate);
Datum
es_load_aggregate(PG_FUNCTION_ARGS)
{
	char	   *aggregate_id = es_arg_id(fcinfo, 0, "aggregate_id", true);
	int64		at_version = PG_ARGISNULL(1) ? -1 : PG_GETARG_INT64(1);
	EsCall		call;
	EsAggregateState st;
	TupleDesc	tupdesc;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "es_load_aggregate must return a composite type");
	if (!PG_ARGISNULL(1) && at_version < 0)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("at_version must not be negative")));

	es_call_begin(fcinfo, &call);
	es_load_state(call.store, aggregate_id, at_version, es_read_until(fcinfo, 2, 3), true, true, &st);
	if (st.state != NULL)		/* it must outlive the SPI connection */
		st.state = DatumGetJsonbP(SPI_datumTransfer(JsonbPGetDatum(st.state), false, -1));
	es_call_end(&call);

	values[0] = CStringGetTextDatum(st.aggregate_type);
	nulls[0] = (st.aggregate_type[0] == '\0');
	values[1] = st.state ? JsonbPGetDatum(st.state) : (Datum) 0;
	nulls[1] = (st.state == NULL);
	values[2] = Int64GetDatum(st.version);
	values[3] = Int64GetDatum(st.snapshot_version);
	nulls[3] = (st.snapshot_version == 0);
	values[4] = Int64GetDatum(st.events_applied);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}
