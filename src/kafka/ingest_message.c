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

/* The value of header name, or NULL. */
static char *
header(rd_kafka_headers_t *h, const char *name)
{
	const void *value;
	size_t		size;

	if (h == NULL || rd_kafka_header_get_last(h, name, &value, &size) != RD_KAFKA_RESP_ERR_NO_ERROR ||
		value == NULL)
		return NULL;
	return pnstrdup(value, size);
}

static char *
required_header(rd_kafka_headers_t *h, const char *name)
{
	char	   *value = header(h, name);

	if (value == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("message has no %s header", name)));
	return value;
}

static void
push_string(JsonbParseState **state, JsonbIteratorToken token, const char *str)
{
	JsonbValue	v;

	v.type = jbvString;
	v.val.string.val = (char *) str;
	v.val.string.len = strlen(str);
	(void) pushJsonbValue(state, token, &v);
}

/*
 * {"kafka_origin": {"topic": topic, "partition": partition}}: where an
 * ingested event came from, so that the mirror does not send it back
 * there.  Not the offset: a message produced twice (a producer's retry)
 * must carry the same event, to be absorbed as a duplicate.  Built, not
 * parsed from text: it is made for every message.
 */
static Jsonb *
origin_metadata(const char *topic, int32 partition)
{
	JsonbParseState *state = NULL;
	JsonbValue	v;

	(void) pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	push_string(&state, WJB_KEY, "kafka_origin");
	(void) pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	push_string(&state, WJB_KEY, "topic");
	push_string(&state, WJB_VALUE, topic);
	push_string(&state, WJB_KEY, "partition");
	v.type = jbvNumeric;
	v.val.numeric = int64_to_numeric(partition);
	(void) pushJsonbValue(&state, WJB_VALUE, &v);
	(void) pushJsonbValue(&state, WJB_END_OBJECT, NULL);
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
	rd_kafka_headers_t *h = NULL;
	const char *topic = rd_kafka_topic_name(msg->rkt);
	char	   *version;
	char	   *time;
	char	   *metadata;
	char	   *source;

	(void) rd_kafka_message_headers(msg, &h);
	source = header(h, "ce_source");
	if (source != NULL && strcmp(source, es_kafka_own_source()) == 0)
		return false;
	memset(req, 0, sizeof(*req));
	memset(ev, 0, sizeof(*ev));
	ev->event_id = required_header(h, "ce_id");
	es_check_id(ev->event_id, "ce_id");
	ev->event_id_given = true;
	ev->event_type = required_header(h, "ce_type");
	es_check_name(ev->event_type, "ce_type");
	req->aggregate_id = header(h, "ce_subject");
	if (req->aggregate_id == NULL && msg->key != NULL)
		req->aggregate_id = pnstrdup(msg->key, msg->key_len);
	if (req->aggregate_id == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("message has neither a ce_subject header nor a key")));
	es_check_id(req->aggregate_id, "ce_subject");
	req->aggregate_type = header(h, "ce_aggregatetype");
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
	version = header(h, "ce_aggregateversion");
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
	if (msg->payload == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("message has no value")));
	ev->data = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
												  CStringGetDatum(pnstrdup(msg->payload, msg->len))));
	es_check_object(ev->data, "data");
	time = header(h, "ce_time");
	ev->occurred_at_given = (time != NULL);
	if (time != NULL)
		ev->occurred_at = DatumGetTimestampTz(DirectFunctionCall3(timestamptz_in, CStringGetDatum(time),
																  ObjectIdGetDatum(InvalidOid),
																  Int32GetDatum(-1)));
	ev->causation_id = header(h, "ce_causationid");
	ev->correlation_id = header(h, "ce_correlationid");
	if (ev->causation_id)
		es_check_id(ev->causation_id, "ce_causationid");
	if (ev->correlation_id)
		es_check_id(ev->correlation_id, "ce_correlationid");

	ev->metadata = origin_metadata(topic, msg->partition);
	metadata = header(h, "ce_metadata");
	if (metadata != NULL)
	{
		Jsonb	   *given = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(metadata)));

		es_check_object(given, "ce_metadata");
		ev->metadata = DatumGetJsonbP(DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(given),
														  JsonbPGetDatum(ev->metadata)));
	}

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

/* The message's headers as a JSON object of strings (bytes not UTF-8 escaped). */
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
			char	   *text = value ? pnstrdup(value, size) : NULL;

			if (i > 0)
				appendStringInfoString(&json, ", ");
			escape_json(&json, name);
			appendStringInfoString(&json, ": ");
			if (text == NULL)
				appendStringInfoString(&json, "null");
			else if (pg_verifymbstr(text, size, true) && strlen(text) == size)
				escape_json(&json, text);
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
