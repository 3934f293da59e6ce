/*-------------------------------------------------------------------------
 *
 * append_sql.c
 *	  The SQL functions of the write path, es_append and es_append_batch:
 *	  argument checks, the JSON form of a batch, and the result rows.  They
 *	  build an EsAppendRequest and hand it to append.c.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "write/append.h"

#include "access/htup_details.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"

#include "core/event.h"
#include "core/validate.h"

/*
 * es_append(aggregate_type, aggregate_id, event_type, data, expected_version,
 *			 metadata, event_id, causation_id, correlation_id, occurred_at)
 *	returns es_append_result (event_id, version, position)
 */
PG_FUNCTION_INFO_V1(es_append);
Datum
es_append(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc = (TupleDesc) fcinfo->flinfo->fn_extra;
	EsAppendRequest req;
	EsEventIn	ev;
	EsCall		call;
	Datum		result[3];
	bool		result_nulls[3] = {false, false, false};

	/* The result descriptor, looked up once per call site. */
	if (tupdesc == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);

		if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
			elog(ERROR, "es_append must return a composite type");
		tupdesc = BlessTupleDesc(CreateTupleDescCopy(tupdesc));
		fcinfo->flinfo->fn_extra = tupdesc;
		MemoryContextSwitchTo(old);
	}

	memset(&req, 0, sizeof(req));
	memset(&ev, 0, sizeof(ev));
	req.aggregate_type = es_arg_name(fcinfo, 0, "aggregate_type", true);
	req.aggregate_id = es_arg_id(fcinfo, 1, "aggregate_id", true);
	ev.event_type = es_arg_name(fcinfo, 2, "event_type", true);
	if (PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("data must not be null"),
				 errhint("Pass an empty object, '{}', for an event without data.")));
	ev.data = PG_GETARG_JSONB_P(3);
	es_check_object(ev.data, "data");
	req.expected = es_arg_expected_version(fcinfo, 4, &req.any);
	ev.metadata = PG_ARGISNULL(5) ? es_empty_object() : PG_GETARG_JSONB_P(5);
	es_check_metadata(ev.metadata, "metadata");
	ev.event_id = es_arg_id(fcinfo, 6, "event_id", false);
	ev.event_id_given = (ev.event_id != NULL);
	ev.causation_id = es_arg_id(fcinfo, 7, "causation_id", false);
	ev.correlation_id = es_arg_id(fcinfo, 8, "correlation_id", false);
	ev.occurred_at_given = !PG_ARGISNULL(9);
	if (ev.occurred_at_given)
		ev.occurred_at = PG_GETARG_TIMESTAMPTZ(9);
	req.nevents = 1;
	req.events = &ev;
	es_append_prepare(&req);

	es_call_begin(fcinfo, &call);
	es_append_execute(&req, call.store);
	es_call_end(&call);

	result[0] = CStringGetTextDatum(ev.event_id);
	result[1] = Int64GetDatum(req.versions[0]);
	result[2] = Int64GetDatum(req.positions[0]);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, result, result_nulls)));
}

/* Error context of es_append_batch: which element of the events array. */
static void
batch_error_context(void *arg)
{
	int			index = *(int *) arg;

	if (index >= 0)
		errcontext("events[%d] of the batch", index);
}

static char *
batch_string(JsonbContainer *obj, const char *key, const char *what, bool required)
{
	JsonbValue *v = getKeyJsonValueFromContainer(obj, key, strlen(key), NULL);
	char	   *s;

	if (v == NULL || v->type == jbvNull)
	{
		if (required)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s must not be null", what),
					 errhint("Every element of events needs at least {\"event_type\": \"...\"}.")));
		return NULL;
	}
	if (v->type != jbvString)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a JSON string", what)));
	s = pnstrdup(v->val.string.val, v->val.string.len);
	if (strlen(s) != (size_t) v->val.string.len)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not contain a NUL character", what)));
	return s;
}

static Jsonb *
batch_object(JsonbContainer *obj, const char *key, Jsonb *dflt)
{
	JsonbValue *v = getKeyJsonValueFromContainer(obj, key, strlen(key), NULL);
	Jsonb	   *jb;

	if (v == NULL || v->type == jbvNull)
		return dflt;
	jb = JsonbValueToJsonb(v);
	es_check_object(jb, key);
	return jb;
}

/*
 * Parse and check one element of the events array of es_append_batch.
 * Unknown keys are refused: a misspelt key would otherwise drop data
 * silently.
 */
static void
batch_parse_event(JsonbValue *elem, EsEventIn *ev, Jsonb *dflt_metadata,
				  char *dflt_causation, char *dflt_correlation)
{
	JsonbContainer *obj;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	Jsonb	   *empty = es_empty_object();
	char	   *s;

	if (elem->type != jbvBinary || !JsonContainerIsObject(elem->val.binary.data))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("each element of events must be a JSON object")));
	obj = elem->val.binary.data;

	it = JsonbIteratorInit(obj);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		static const char *const keys[] = {"event_type", "data", "metadata", "event_id",
		"causation_id", "correlation_id", "occurred_at"};
		bool		known = false;
		size_t		k;

		if (tok != WJB_KEY)
			continue;
		for (k = 0; k < lengthof(keys); k++)
			known = known || ((size_t) v.val.string.len == strlen(keys[k]) &&
							  memcmp(v.val.string.val, keys[k], v.val.string.len) == 0);
		if (!known)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unknown key \"%.*s\" in an element of events",
							v.val.string.len, v.val.string.val),
					 errhint("Keys are event_type, data, metadata, event_id, causation_id, correlation_id and occurred_at.")));
	}

	ev->event_type = batch_string(obj, "event_type", "event_type", true);
	es_check_name(ev->event_type, "event_type");
	ev->data = batch_object(obj, "data", empty);
	ev->metadata = batch_object(obj, "metadata", dflt_metadata ? dflt_metadata : empty);
	es_check_metadata(ev->metadata, "metadata");
	ev->event_id = batch_string(obj, "event_id", "event_id", false);
	ev->event_id_given = (ev->event_id != NULL);
	if (ev->event_id)
		es_check_id(ev->event_id, "event_id");
	ev->causation_id = batch_string(obj, "causation_id", "causation_id", false);
	if (ev->causation_id)
		es_check_id(ev->causation_id, "causation_id");
	else
		ev->causation_id = dflt_causation;
	ev->correlation_id = batch_string(obj, "correlation_id", "correlation_id", false);
	if (ev->correlation_id)
		es_check_id(ev->correlation_id, "correlation_id");
	else
		ev->correlation_id = dflt_correlation;
	s = batch_string(obj, "occurred_at", "occurred_at", false);
	ev->occurred_at_given = (s != NULL);
	if (s)
		ev->occurred_at = DatumGetTimestampTz(DirectFunctionCall3(timestamptz_in,
																  CStringGetDatum(s),
																  ObjectIdGetDatum(InvalidOid),
																  Int32GetDatum(-1)));
}

/*
 * es_append_batch(aggregate_type, aggregate_id, events, expected_version,
 *				   metadata, causation_id, correlation_id)
 *	returns setof es_append_result, one row per event, in order
 *
 * events is a JSON array of objects with the keys event_type (required),
 * data, metadata, event_id, causation_id, correlation_id, occurred_at.  The
 * metadata, causation_id and correlation_id arguments are defaults for the
 * elements that do not carry their own.  All events go to one aggregate,
 * atomically, with one expected_version for the batch.
 */
PG_FUNCTION_INFO_V1(es_append_batch);
Datum
es_append_batch(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	EsAppendRequest req;
	Jsonb	   *events;
	Jsonb	   *dflt_metadata = NULL;
	char	   *dflt_causation;
	char	   *dflt_correlation;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	ErrorContextCallback errcb;
	int			index = -1;
	int			i;
	EsCall		call;

	InitMaterializedSRF(fcinfo, 0);

	memset(&req, 0, sizeof(req));
	req.aggregate_type = es_arg_name(fcinfo, 0, "aggregate_type", true);
	req.aggregate_id = es_arg_id(fcinfo, 1, "aggregate_id", true);
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("events must not be null")));
	events = PG_GETARG_JSONB_P(2);
	if (!JB_ROOT_IS_ARRAY(events) || JB_ROOT_IS_SCALAR(events))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("events must be a JSON array of event objects"),
				 errhint("For example: '[{\"event_type\": \"ACCOUNT_OPENED\", \"data\": {...}}]'.")));
	req.nevents = JB_ROOT_COUNT(events);
	if (req.nevents == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("events must not be empty")));
	if (req.nevents > ES_MAX_BATCH_EVENTS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("a batch holds at most %d events; this one has %d", ES_MAX_BATCH_EVENTS, req.nevents),
				 errhint("Append it in several batches: each is atomic, and expected_version chains them.")));
	req.expected = es_arg_expected_version(fcinfo, 3, &req.any);
	if (!PG_ARGISNULL(4))
	{
		dflt_metadata = PG_GETARG_JSONB_P(4);
		es_check_metadata(dflt_metadata, "metadata");
	}
	dflt_causation = es_arg_id(fcinfo, 5, "causation_id", false);
	dflt_correlation = es_arg_id(fcinfo, 6, "correlation_id", false);
	req.events = palloc0(sizeof(EsEventIn) * req.nevents);

	errcb.callback = batch_error_context;
	errcb.arg = &index;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	it = JsonbIteratorInit(&events->root);
	i = 0;
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok != WJB_ELEM)
			continue;
		CHECK_FOR_INTERRUPTS();
		index = i;
		batch_parse_event(&v, &req.events[i], dflt_metadata, dflt_causation, dflt_correlation);
		i++;
	}
	error_context_stack = errcb.previous;

	es_append_prepare(&req);
	es_call_begin(fcinfo, &call);
	es_append_execute(&req, call.store);
	es_call_end(&call);

	for (i = 0; i < req.nevents; i++)
	{
		Datum		values[3];
		bool		nulls[3] = {false, false, false};

		values[0] = CStringGetTextDatum(req.events[i].event_id);
		values[1] = Int64GetDatum(req.versions[i]);
		values[2] = Int64GetDatum(req.positions[i]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
