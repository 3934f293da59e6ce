/*-------------------------------------------------------------------------
 *
 * validate.c
 *	  Argument checks and defaults shared by the SQL-callable functions.
 *
 * Each check raises a user-facing error with a standard SQLSTATE and says
 * what was wrong and how to fix it.  The checks run before any write, so a
 * refused call leaves nothing behind.  No locks, no catalog access; safe to
 * call with or without an SPI connection.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "core/validate.h"

#include "core/event.h"
#include "core/guc.h"

#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/timestamp.h"

static const char *
json_kind(Jsonb *jb)
{
	if (JB_ROOT_IS_SCALAR(jb))
	{
		JsonbValue	v;

		if (JsonbExtractScalar(&jb->root, &v))
		{
			switch (v.type)
			{
				case jbvNull:
					return "null";
				case jbvString:
					return "string";
				case jbvNumeric:
					return "number";
				case jbvBool:
					return "boolean";
				default:
					break;
			}
		}
		return "scalar";
	}
	return JB_ROOT_IS_ARRAY(jb) ? "array" : "object";
}

/*
 * es_check_id: an identifier (event, aggregate, causation or correlation id)
 * must be non-empty and at most ES_MAX_ID_LEN bytes.
 */
void
es_check_id(const char *value, const char *what)
{
	size_t		len = strlen(value);

	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", what)));
	if (len > ES_MAX_ID_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("%s is too long", what),
				 errdetail("It is %zu bytes long; the limit is %d bytes.",
						   len, ES_MAX_ID_LEN)));
}

/*
 * es_check_name: event type and aggregate type names start with a letter and
 * hold only letters, digits and _ . : -, so that they travel unchanged into
 * Kafka topic names and CloudEvents headers.
 */
void
es_check_name(const char *value, const char *what)
{
	size_t		len = strlen(value);
	const char *p;

	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", what)));
	if (len > ES_MAX_NAME_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("%s is too long", what),
				 errdetail("It is %zu bytes long; the limit is %d bytes.",
						   len, ES_MAX_NAME_LEN)));
	for (p = value; *p; p++)
	{
		bool		ok = (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z');

		if (p != value)
			ok = ok || (*p >= '0' && *p <= '9') ||
				*p == '_' || *p == '.' || *p == ':' || *p == '-';
		if (!ok)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid %s \"%s\"", what, value),
					 errdetail("Names start with a letter and contain only letters, digits, \"_\", \".\", \":\" and \"-\".")));
	}
}

/*
 * Fetch a text argument as a C string, refusing NULL when required.  The
 * result is palloc'd in the caller's memory context.
 */
static char *
arg_text(FunctionCallInfo fcinfo, int argno, const char *what, bool required)
{
	if (PG_ARGISNULL(argno))
	{
		if (required)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s must not be null", what)));
		return NULL;
	}
	return text_to_cstring(PG_GETARG_TEXT_PP(argno));
}

char *
es_arg_id(FunctionCallInfo fcinfo, int argno, const char *what, bool required)
{
	char	   *value = arg_text(fcinfo, argno, what, required);

	if (value != NULL)
		es_check_id(value, what);
	return value;
}

char *
es_arg_name(FunctionCallInfo fcinfo, int argno, const char *what, bool required)
{
	char	   *value = arg_text(fcinfo, argno, what, required);

	if (value != NULL)
		es_check_name(value, what);
	return value;
}

/* es_check_object: data and metadata are JSON objects, never arrays or scalars. */
void
es_check_object(Jsonb *jb, const char *what)
{
	if (!JB_ROOT_IS_OBJECT(jb))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a JSON object", what),
				 errdetail("The value given is a JSON %s.", json_kind(jb)),
				 errhint("Wrap the value in an object, for example {\"value\": ...}.")));
}

/*
 * es_traceparent_valid: whether value is a W3C trace context traceparent
 * (version-traceid-parentid-flags in lower-case hex, ids not all zero,
 * version ff invalid, exactly 55 characters for version 00); else *why
 * says what is wrong.
 */
bool
es_traceparent_valid(const char *v, const char **why)
{
	size_t		len = strlen(v);
	int			i;

	*why = "A traceparent is version-traceid-parentid-flags, as in 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.";
	if (len < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-' || (len > 55 && v[55] != '-') ||
		(strncmp(v, "00", 2) == 0 && len != 55) || strncmp(v, "ff", 2) == 0 ||
		strspn(v + 3, "0") >= 32 || strspn(v + 36, "0") >= 16)
		return false;
	for (i = 0; i < 55; i++)
		if (i != 2 && i != 35 && i != 52 && !((v[i] >= '0' && v[i] <= '9') || (v[i] >= 'a' && v[i] <= 'f')))
		{
			*why = "A traceparent is lower-case hexadecimal digits and dashes.";
			return false;
		}
	return true;
}

/* es_tracestate_valid: a W3C tracestate: at most 512 printable ASCII characters. */
bool
es_tracestate_valid(const char *v)
{
	size_t		i;

	for (i = 0; v[i] != '\0'; i++)
		if (i >= 512 || v[i] < 0x20 || v[i] > 0x7e)
			return false;
	return true;
}

/*
 * es_check_metadata: a caller's metadata is a JSON object without the keys
 * the store writes itself: kafka_origin, where the Kafka ingest records an
 * event's origin (the mirror trusts it, not sending an event back to its
 * topic, keeping its CloudEvents source), and personal_data, the sealed
 * fields of the event (reads decrypt what it lists).  A writer must not be
 * able to forge either.
 */
void
es_check_metadata(Jsonb *jb, const char *what)
{
	es_check_object(jb, what);
	if (getKeyJsonValueFromContainer(&jb->root, "kafka_origin", strlen("kafka_origin"), NULL) != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s key \"kafka_origin\" is reserved for the Kafka ingest", what),
				 errdetail("It records the topic and the CloudEvents source an ingested event came from.")));
	if (getKeyJsonValueFromContainer(&jb->root, "personal_data", strlen("personal_data"), NULL) != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s key \"personal_data\" is reserved for the store", what),
				 errdetail("It records which fields of the event's data are sealed personal data, and whose."),
				 errhint("Register personal fields with es_register_personal_data; the store records them.")));
}

/*
 * es_check_occurred_at: an event occurs at a finite time of the years 1 to
 * 9999 (UTC).  RFC 3339, the time of CloudEvents and of most clients'
 * libraries, has no other: a consumer that cannot read an event's time
 * loses the event.
 */
void
es_check_occurred_at(TimestampTz t, const char *what)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (TIMESTAMP_NOT_FINITE(t) || timestamp2tm(t, NULL, &tm, &fsec, NULL, NULL) != 0 ||
		tm.tm_year < 1 || tm.tm_year > 9999)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("%s %s is out of range", what, timestamptz_to_str(t)),
				 errdetail("An event occurs at a finite time of the years 1 to 9999 (UTC), the range of RFC 3339.")));
}

es_event_size_check_hook_type es_event_size_check_hook = NULL;

/*
 * es_check_event_size: the stored payload of one event (data plus metadata)
 * may not exceed ultracore_es.max_event_bytes, nor what a layer that sends
 * events on can send (es_event_size_check_hook).  The guide asks for small
 * events; a limit keeps one careless producer from bloating every consumer.
 */
void
es_check_event_size(Jsonb *data, Jsonb *metadata, const char *event_id)
{
	Size		size = VARSIZE(data) + (metadata ? VARSIZE(metadata) : 0);

	if (size > (Size) es_max_event_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("event is too large"),
				 event_id ?
				 errdetail("Event \"%s\" has %zu bytes of data and metadata; ultracore_es.max_event_bytes is %d.",
						   event_id, size, es_max_event_bytes) :
				 errdetail("The event has %zu bytes of data and metadata; ultracore_es.max_event_bytes is %d.",
						   size, es_max_event_bytes),
				 errhint("Keep large payloads outside the event store and put a reference in the event.")));
	if (es_event_size_check_hook != NULL)
		es_event_size_check_hook(data, metadata, event_id);
}

/*
 * es_arg_expected_version: NULL means "any version" (*any is set); 0 means the
 * aggregate must not exist; -1 (ES_EXPECT_EXISTS) that it must exist; N >= 1
 * that its current version is N.  Anything below -1 is refused.
 */
int64
es_arg_expected_version(FunctionCallInfo fcinfo, int argno, bool *any)
{
	int64		v;

	*any = PG_ARGISNULL(argno);
	if (*any)
		return 0;
	v = PG_GETARG_INT64(argno);
	if (v < ES_EXPECT_EXISTS)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("expected_version %lld is out of range", (long long) v),
				 errdetail("Use NULL for any version, 0 for a new aggregate, -1 for an existing aggregate, or the current version (1 or more).")));
	return v;
}

/* es_push_string: push a string (a key, a value, an element) while building a jsonb. */
void
es_push_string(JsonbParseState **state, JsonbIteratorToken token, const char *str)
{
	JsonbValue	v;

	v.type = jbvString;
	v.val.string.val = (char *) str;
	v.val.string.len = strlen(str);
	(void) pushJsonbValue(state, token, &v);
}

/* es_empty_object: a new, empty JSON object ('{}'), palloc'd. */
Jsonb *
es_empty_object(void)
{
	JsonbValue	v;

	v.type = jbvObject;
	v.val.object.nPairs = 0;
	v.val.object.pairs = NULL;
	return JsonbValueToJsonb(&v);
}
