/*-------------------------------------------------------------------------
 *
 * ingest_message.c
 *	  A Kafka message as the ingest (ingest.c) takes it: decoded into an
 *	  append request (the CloudEvents ce_* headers, the key, the JSON
 *	  value, the origin recorded in the event's metadata), or, when it
 *	  cannot be appended, recorded as it came in es_kafka_dead_letters.
 *
 * Allocates in the caller's memory context; reads nothing of librdkafka
 * but the message handed to it.  Errors propagate: after a batch failed,
 * the ingest appends each of its messages in a subtransaction of its own,
 * and dead-letters a message whose decoding or append failed for a reason
 * of its own (not a transient error).
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "kafka/kafka.h"

#include "catalog/pg_type.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "core/validate.h"
#include "write/append.h"
#include "write/event_type.h"

/* Whether size bytes are text of the database: no NUL, and in its encoding. */
static bool
bytes_are_text(const void *bytes, size_t size)
{
	return memchr(bytes, '\0', size) == NULL && pg_verifymbstr(bytes, size, true);
}

/*
 * Bytes of a message (its key, its value, a header's value: what, and
 * the header's name) as a C string.  Refused unless they are text of the
 * database: a NUL would end the string early (two keys that differ after
 * it would name one aggregate, a value would lose its tail), and the
 * input functions the store hands them to take their bytes as valid in
 * the database's encoding (rows a client could not decode, a dump that
 * would not load back).
 */
static char *
message_text(const void *bytes, size_t size, const char *what, const char *name)
{
	if (!bytes_are_text(bytes, size))
		ereport(ERROR,
				(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
				 name != NULL ? errmsg("%s \"%s\" of the message is not text", what, name)
				 : errmsg("%s of the message is not text", what),
				 errdetail("It holds a NUL byte or bytes that are not valid %s.", GetDatabaseEncodingName())));
	return pnstrdup(bytes, size);
}

/* The value of header name, or NULL. */
static char *
header(rd_kafka_headers_t *h, const char *name)
{
	const void *value;
	size_t		size;

	if (h == NULL || rd_kafka_header_get_last(h, name, &value, &size) != RD_KAFKA_RESP_ERR_NO_ERROR ||
		value == NULL)
		return NULL;
	return message_text(value, size, "header", name);
}

/*
 * A message's CloudEvent: in binary mode its attributes are ce_* headers
 * and its value the data; in structured mode (content-type
 * application/cloudevents+json) its value is one JSON object holding both.
 */
typedef struct CloudEvent
{
	rd_kafka_headers_t *headers;
	Jsonb	   *structured;		/* NULL in binary mode */
} CloudEvent;

/* The member name of the structured event, or NULL. */
static JsonbValue *
member(CloudEvent *ce, const char *name)
{
	JsonbValue *v = getKeyJsonValueFromContainer(&ce->structured->root, name, strlen(name), NULL);

	return v == NULL || v->type == jbvNull ? NULL : v;
}

/*
 * Attribute header (a "ce_" header name) as text: the header in binary
 * mode, the member without the prefix (a string, number or boolean) in
 * structured mode; NULL when absent.  Header names, not attribute names,
 * so that the binary mode, the usual one, builds no string per lookup.
 */
static char *
attribute(CloudEvent *ce, const char *header_name)
{
	const char *name = header_name + strlen("ce_");
	JsonbValue *v;

	Assert(strncmp(header_name, "ce_", 3) == 0);
	if (ce->structured == NULL)
		return header(ce->headers, header_name);
	if ((v = member(ce, name)) == NULL)
		return NULL;
	switch (v->type)
	{
		case jbvString:
			return pnstrdup(v->val.string.val, v->val.string.len);
		case jbvNumeric:
			return DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
		case jbvBool:
			return pstrdup(v->val.boolean ? "true" : "false");
		default:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("CloudEvent attribute \"%s\" is not a string", name)));
	}
	return NULL;					/* keep compiler quiet */
}

static char *
required_attribute(CloudEvent *ce, const char *header_name)
{
	char	   *value = attribute(ce, header_name);

	if (value == NULL && ce->structured == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("message has no %s header", header_name)));
	if (value == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("structured CloudEvent has no \"%s\" attribute", header_name + strlen("ce_"))));
	return value;
}

/* Whether a media type (parameters such as charset aside) is a kind of JSON. */
static bool
media_type_is_json(const char *type)
{
	size_t		len = strcspn(type, "; \t");

	return (len == strlen("application/json") && pg_strncasecmp(type, "application/json", len) == 0) ||
		(len == strlen("text/json") && pg_strncasecmp(type, "text/json", len) == 0) ||
		(len > 5 && pg_strncasecmp(type + len - 5, "+json", 5) == 0);
}

/*
 * The mode of the message, from its content-type header: structured (set
 * ce->structured from the value), or binary (false).  Batches and other
 * event formats are refused.
 */
static void
cloud_event_open(rd_kafka_message_t *msg, CloudEvent *ce)
{
	char	   *content_type;
	Jsonb	   *value;

	memset(ce, 0, sizeof(*ce));
	(void) rd_kafka_message_headers(msg, &ce->headers);
	content_type = header(ce->headers, "content-type");
	if (content_type == NULL || pg_strncasecmp(content_type, "application/cloudevents", strlen("application/cloudevents")) != 0)
		return;
	if (pg_strncasecmp(content_type, "application/cloudevents-batch", strlen("application/cloudevents-batch")) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("batched CloudEvents (content-type %s) are not supported", content_type),
				 errhint("Produce one event per message, in binary or structured mode.")));
	if (!media_type_is_json(content_type))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("structured CloudEvents of content-type %s are not supported", content_type),
				 errhint("Structured mode is read in the JSON format (application/cloudevents+json).")));
	if (msg->payload == NULL || msg->len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("structured CloudEvent without a value")));
	value = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
											   CStringGetDatum(message_text(msg->payload, msg->len, "the value", NULL))));
	if (!JB_ROOT_IS_OBJECT(value))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("structured CloudEvent is not a JSON object")));
	ce->structured = value;
}

/*
 * The event's data: a JSON object, or {} for a CloudEvent without data
 * (which CloudEvents allows).  Data of another content type than JSON is
 * refused, whether it would parse as JSON or not: the store keeps JSON
 * objects, and would mirror it back as application/json.
 */
static Jsonb *
cloud_event_data(rd_kafka_message_t *msg, CloudEvent *ce)
{
	char	   *content_type = ce->structured ? attribute(ce, "ce_datacontenttype")
		: header(ce->headers, "content-type");
	JsonbValue *v;
	Jsonb	   *data;

	if (content_type != NULL && !media_type_is_json(content_type))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("data of content type %s is not supported", content_type),
				 errdetail("The store keeps event data as JSON objects."),
				 errhint("Produce the data as application/json.")));
	if (ce->structured == NULL)
	{
		if (msg->payload == NULL || msg->len == 0)
			return es_empty_object();
		data = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
												  CStringGetDatum(message_text(msg->payload, msg->len, "the value", NULL))));
	}
	else
	{
		if (member(ce, "data_base64") != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("binary data (data_base64) is not supported"),
					 errdetail("The store keeps event data as JSON objects.")));
		if ((v = member(ce, "data")) == NULL)
			return es_empty_object();
		if (v->type != jbvBinary || !JsonContainerIsObject(v->val.binary.data))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("data must be a JSON object")));
		data = JsonbValueToJsonb(v);
	}
	es_check_object(data, "data");
	return data;
}

/* The metadata the producer gave (ce_metadata: a JSON object, or its text), or NULL. */
static Jsonb *
cloud_event_metadata(CloudEvent *ce)
{
	JsonbValue *v;
	char	   *text;
	Jsonb	   *given;

	if (ce->structured != NULL && (v = member(ce, "metadata")) != NULL && v->type == jbvBinary)
		given = JsonbValueToJsonb(v);
	else if ((text = attribute(ce, "ce_metadata")) != NULL)
		given = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(text)));
	else
		return NULL;
	es_check_object(given, "ce_metadata");
	return given;
}

/*
 * The W3C trace context the message carries (name: traceparent or
 * tracestate): the CloudEvents distributed tracing extension's attribute,
 * else the plain header OpenTelemetry's Kafka instrumentation writes; NULL
 * when it has none, or a malformed one.
 */
static char *
cloud_event_trace(CloudEvent *ce, const char *header_name)
{
	const char *name = header_name + strlen("ce_");
	char	   *value = attribute(ce, header_name);
	const char *why;

	if (value == NULL)
		value = header(ce->headers, name);
	/* A malformed one is dropped: it says nothing a trace could continue from. */
	if (value != NULL &&
		(strcmp(name, "traceparent") == 0 ? !es_traceparent_valid(value, &why) : !es_tracestate_valid(value)))
		return NULL;
	return value;
}

/*
 * {"kafka_origin": {"topic": topic, "partition": partition, "source":
 * source}, "traceparent": ..., "tracestate": ...}: where an ingested event came from, so that the mirror does not
 * send it back there, and sends it on with its own source.  Not the offset:
 * a message produced twice (a producer's retry) must carry the same event,
 * to be absorbed as a duplicate.  The source is part of the event's
 * identity: an event of another source with the same id differs in its
 * metadata, and is refused, not absorbed.  Built, not parsed from text: it
 * is made for every message.
 */
static Jsonb *
origin_metadata(const char *topic, int32 partition, const char *source,
				const char *traceparent, const char *tracestate)
{
	JsonbParseState *state = NULL;
	JsonbValue	v;

	(void) pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	es_push_string(&state, WJB_KEY, "kafka_origin");
	(void) pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	es_push_string(&state, WJB_KEY, "topic");
	es_push_string(&state, WJB_VALUE, topic);
	es_push_string(&state, WJB_KEY, "partition");
	v.type = jbvNumeric;
	v.val.numeric = int64_to_numeric(partition);
	(void) pushJsonbValue(&state, WJB_VALUE, &v);
	if (source != NULL)
	{
		es_push_string(&state, WJB_KEY, "source");
		es_push_string(&state, WJB_VALUE, source);
	}
	(void) pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	if (traceparent != NULL)
	{
		es_push_string(&state, WJB_KEY, "traceparent");
		es_push_string(&state, WJB_VALUE, traceparent);
		if (tracestate != NULL)
		{
			es_push_string(&state, WJB_KEY, "tracestate");
			es_push_string(&state, WJB_VALUE, tracestate);
		}
	}
	return JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_OBJECT, NULL));
}

/*
 * The event one message carries, as a one-event append request of its own
 * in *req (ev its event); errors propagate.  False for a message this
 * store's mirror produced: its event is already here.
 */
bool
es_kafka_ingest_parse(rd_kafka_message_t *msg, EsAppendRequest *req, EsEventIn *ev)
{
	CloudEvent	ce;
	const char *topic = rd_kafka_topic_name(msg->rkt);
	const char *own = es_kafka_own_source();
	char	   *specversion;
	char	   *version;
	char	   *time;
	char	   *source;
	char	   *mirrored_by;
	Jsonb	   *metadata;

	cloud_event_open(msg, &ce);
	source = attribute(&ce, "ce_source");
	mirrored_by = attribute(&ce, "ce_mirroredby");
	if ((source != NULL && strcmp(source, own) == 0) || (mirrored_by != NULL && strcmp(mirrored_by, own) == 0))
		return false;
	/* Binary messages of producers that set no ce_specversion are taken as 1.0. */
	specversion = ce.structured ? required_attribute(&ce, "ce_specversion") : attribute(&ce, "ce_specversion");
	if (specversion != NULL && strcmp(specversion, "1.0") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("CloudEvents specversion \"%s\" is not supported", specversion),
				 errdetail("The ingest reads CloudEvents 1.0.")));
	memset(req, 0, sizeof(*req));
	memset(ev, 0, sizeof(*ev));
	ev->event_id = required_attribute(&ce, "ce_id");
	es_check_id(ev->event_id, "ce_id");
	ev->event_id_given = true;
	ev->event_type = required_attribute(&ce, "ce_type");
	es_check_name(ev->event_type, "ce_type");
	req->aggregate_id = attribute(&ce, "ce_subject");
	if (req->aggregate_id == NULL && msg->key != NULL)
		req->aggregate_id = message_text(msg->key, msg->key_len, "the key", NULL);
	if (req->aggregate_id == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("message has neither a ce_subject header nor a key")));
	es_check_id(req->aggregate_id, "ce_subject");
	req->aggregate_type = attribute(&ce, "ce_aggregatetype");
	if (req->aggregate_type == NULL)
	{
		EsEventType type;

		es_event_type_lookup(ev->event_type, &type);
		if (type.aggregate_type[0] == '\0')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("message has no ce_aggregatetype header, and event type \"%s\" fits any aggregate type",
							ev->event_type)));
		req->aggregate_type = pstrdup(type.aggregate_type);
	}
	es_check_name(req->aggregate_type, "ce_aggregatetype");

	/* Version v is appended at expected version v - 1; without one, at any. */
	version = attribute(&ce, "ce_aggregateversion");
	req->any = (version == NULL);
	if (version != NULL)
	{
		int64		v = DatumGetInt64(DirectFunctionCall1(int8in, CStringGetDatum(version)));

		if (v < 1)
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("ce_aggregateversion must be at least 1")));
		req->expected = v - 1;
	}
	ev->data = cloud_event_data(msg, &ce);
	time = attribute(&ce, "ce_time");
	ev->occurred_at_given = (time != NULL);
	if (time != NULL)
		ev->occurred_at = DatumGetTimestampTz(DirectFunctionCall3(timestamptz_in, CStringGetDatum(time),
																  ObjectIdGetDatum(InvalidOid),
																  Int32GetDatum(-1)));
	ev->causation_id = attribute(&ce, "ce_causationid");
	ev->correlation_id = attribute(&ce, "ce_correlationid");
	if (ev->causation_id)
		es_check_id(ev->causation_id, "ce_causationid");
	if (ev->correlation_id)
		es_check_id(ev->correlation_id, "ce_correlationid");

	ev->metadata = origin_metadata(topic, msg->partition, source,
								   cloud_event_trace(&ce, "ce_traceparent"), cloud_event_trace(&ce, "ce_tracestate"));
	/*
	 * The producer's metadata, without a personal_data key: what it lists
	 * was sealed by another store, with keys this one does not have; the
	 * append seals this store's own.
	 */
	if ((metadata = cloud_event_metadata(&ce)) != NULL)
		ev->metadata = DatumGetJsonbP(DirectFunctionCall2(jsonb_concat,
														  DirectFunctionCall2(jsonb_delete, JsonbPGetDatum(metadata),
																			  CStringGetTextDatum("personal_data")),
														  JsonbPGetDatum(ev->metadata)));

	req->nevents = 1;
	req->events = ev;
	req->appended_by = psprintf("kafka:%s", topic);
	return true;
}

static EsPlan ingest_dead_letter_plan = {
	"INSERT INTO @extschema@.es_kafka_dead_letters (topic, partition, \"offset\", key, headers, value, error)"
	" VALUES ($1, $2, $3, $4, $5, $6, $7)",
	7, {TEXTOID, INT4OID, INT8OID, BYTEAOID, JSONBOID, BYTEAOID, TEXTOID}
};

static Datum
bytes(const void *data, size_t len)
{
	bytea	   *b = palloc(VARHDRSZ + len);

	SET_VARSIZE(b, VARHDRSZ + len);
	memcpy(VARDATA(b), data, len);
	return PointerGetDatum(b);
}

/* The message's headers as a JSON object of strings (bytes that are not text: "(binary)"). */
static Datum
headers_json(rd_kafka_message_t *msg)
{
	rd_kafka_headers_t *h = NULL;
	StringInfoData json;
	size_t		i;
	const char *name;
	const void *value;
	size_t		size;

	initStringInfo(&json);
	appendStringInfoChar(&json, '{');
	if (rd_kafka_message_headers(msg, &h) == RD_KAFKA_RESP_ERR_NO_ERROR)
		for (i = 0; rd_kafka_header_get_all(h, i, &name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR; i++)
		{
			if (i > 0)
				appendStringInfoString(&json, ", ");
			escape_json(&json, bytes_are_text(name, strlen(name)) ? name : "(binary)");
			appendStringInfoString(&json, ": ");
			if (value == NULL)
				appendStringInfoString(&json, "null");
			else if (bytes_are_text(value, size))
				escape_json(&json, pnstrdup(value, size));
			else
				escape_json(&json, "(binary)");
		}
	appendStringInfoChar(&json, '}');
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(json.data));
}

/*
 * Record msg, which could not be appended for error, in
 * es_kafka_dead_letters: its place, key, headers and value as they came.
 * Needs SPI.
 */
void
es_kafka_ingest_dead_letter(rd_kafka_message_t *msg, const char *error)
{
	Datum		args[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};

	args[0] = CStringGetTextDatum(rd_kafka_topic_name(msg->rkt));
	args[1] = Int32GetDatum(msg->partition);
	args[2] = Int64GetDatum(msg->offset);
	args[3] = msg->key ? bytes(msg->key, msg->key_len) : (Datum) 0;
	nulls[3] = msg->key ? ' ' : 'n';
	args[4] = headers_json(msg);
	args[5] = msg->payload ? bytes(msg->payload, msg->len) : (Datum) 0;
	nulls[5] = msg->payload ? ' ' : 'n';
	args[6] = CStringGetTextDatum(error);
	if (SPI_execute_plan(es_plan(&ingest_dead_letter_plan), args, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not record a Kafka dead letter");
}
