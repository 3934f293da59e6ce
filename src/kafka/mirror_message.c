/*-------------------------------------------------------------------------
 *
 * mirror_message.c
 *	  An event as the mirror (mirror.c) sends it: a CloudEvent in the Kafka
 *	  binding's binary mode, its attributes ce_* headers (the value, the
 *	  event's data, and the key, its aggregate id, are the mirror's).
 *
 * Reads nothing but the event's columns; allocates in the caller's memory
 * context.  The ingest reads what this writes (ingest_message.c).
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "kafka/kafka.h"

#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "core/event.h"
#include "core/validate.h"
#include "privacy/personal_data.h"

static void
add_header(rd_kafka_headers_t *h, const char *name, const char *value)
{
	if (value != NULL)
		rd_kafka_header_add(h, name, -1, value, strlen(value));
}

/* A text column as a header: librdkafka copies it, no C string is made first. */
static void
add_text_header(rd_kafka_headers_t *h, const char *name, Datum value)
{
	text	   *t = DatumGetTextPP(value);

	rd_kafka_header_add(h, name, -1, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
}

static void
add_int64_header(rd_kafka_headers_t *h, const char *name, int64 value)
{
	char		buf[MAXINT8LEN + 1];

	rd_kafka_header_add(h, name, -1, buf, pg_lltoa(value, buf));
}

/* n as width digits, zero-padded, at p; the end. */
static char *
digits(char *p, int n, int width)
{
	int			i;

	for (i = width - 1; i >= 0; i--, n /= 10)
		p[i] = '0' + n % 10;
	return p + width;
}

/*
 * RFC 3339 in UTC (2026-12-06T09:30:00.123456Z), as CloudEvents wants its
 * time, whatever the server's time zone; NULL for a time RFC 3339 cannot
 * say (infinite, or outside the years 1 to 9999: refused at append since
 * 1.1, possible in events of 1.0), and the message goes without ce_time,
 * which is optional.
 */
static const char *
rfc3339(TimestampTz t, char *buf, size_t len)
{
	struct pg_tm tm;
	fsec_t		fsec;
	char	   *p = buf;

	Assert(len >= sizeof("0000-00-00T00:00:00.000000Z"));
	if (TIMESTAMP_NOT_FINITE(t) || timestamp2tm(t, NULL, &tm, &fsec, NULL, NULL) != 0 ||
		tm.tm_year < 1 || tm.tm_year > 9999)
		return NULL;
	/* Digits written here: snprintf took a twentieth of the mirror's time. */
	p = digits(p, tm.tm_year, 4);
	*p++ = '-';
	p = digits(p, tm.tm_mon, 2);
	*p++ = '-';
	p = digits(p, tm.tm_mday, 2);
	*p++ = 'T';
	p = digits(p, tm.tm_hour, 2);
	*p++ = ':';
	p = digits(p, tm.tm_min, 2);
	*p++ = ':';
	p = digits(p, tm.tm_sec, 2);
	if (fsec != 0)
	{
		*p++ = '.';
		p = digits(p, (int) fsec, 6);
	}
	*p++ = 'Z';
	*p = '\0';
	return buf;
}

/* The string at key of a JSON object's container, or NULL. */
static char *
container_string(JsonbContainer *container, const char *key)
{
	JsonbValue *value = getKeyJsonValueFromContainer(container, key, strlen(key), NULL);

	if (value == NULL || value->type != jbvString)
		return NULL;
	return pnstrdup(value->val.string.val, value->val.string.len);
}

/*
 * es_kafka_event_origin: a string of an ingested event's origin ("topic",
 * "source"), from its metadata's kafka_origin; NULL for other events.
 */
char *
es_kafka_event_origin(Jsonb *metadata, const char *key)
{
	JsonbValue *origin;

	if (JB_ROOT_COUNT(metadata) == 0)
		return NULL;			/* most events: '{}' */
	origin = getKeyJsonValueFromContainer(&metadata->root, "kafka_origin", strlen("kafka_origin"), NULL);
	if (origin == NULL || origin->type != jbvBinary || !JsonContainerIsObject(origin->val.binary.data))
		return NULL;
	return container_string(origin->val.binary.data, key);
}

/*
 * es_kafka_mirror_headers: the ce_* headers of the event whose es_events
 * columns are values and nulls.
 */
rd_kafka_headers_t *
es_kafka_mirror_headers(Datum *values, bool *nulls, const char *aggregate_type)
{
	rd_kafka_headers_t *h;
	Jsonb	   *metadata = DatumGetJsonbP(values[EV_METADATA]);
	bool		has_metadata = JB_ROOT_COUNT(metadata) > 0;
	const char *own_source = es_kafka_own_source();
	char	   *source;
	char		time[64];
	char	   *trace;
	const char *why;

	h = rd_kafka_headers_new(18);
	add_header(h, "ce_specversion", "1.0");
	add_text_header(h, "ce_id", values[EV_EVENT_ID]);

	/*
	 * An ingested event keeps its source: (source, id) is a CloudEvent's
	 * identity, which a forwarder must not change.  ce_mirroredby says
	 * which store sent it, for the ingest's echo check.
	 */
	source = es_kafka_event_origin(metadata, "source");
	add_header(h, "ce_source", source != NULL ? source : own_source);
	add_header(h, "ce_mirroredby", own_source);
	add_text_header(h, "ce_type", values[EV_EVENT_TYPE]);
	add_text_header(h, "ce_subject", values[EV_AGGREGATE_ID]);
	add_header(h, "ce_time", rfc3339(DatumGetTimestampTz(values[EV_OCCURRED_AT]), time, sizeof(time)));
	add_header(h, "content-type", "application/json");
	add_header(h, "ce_aggregatetype", aggregate_type);
	add_int64_header(h, "ce_aggregateversion", DatumGetInt64(values[EV_VERSION]));
	add_int64_header(h, "ce_position", DatumGetInt64(values[EV_POSITION]));
	if (!nulls[EV_CAUSATION_ID])
		add_text_header(h, "ce_causationid", values[EV_CAUSATION_ID]);
	if (!nulls[EV_CORRELATION_ID])
		add_text_header(h, "ce_correlationid", values[EV_CORRELATION_ID]);
	if (!has_metadata)
		return h;				/* no metadata, personal data or trace context */
	add_header(h, "ce_metadata", JsonbToCString(NULL, &metadata->root, 0));
	/* Whose key sealed the personal fields (the value has them sealed, omitted or plain). */
	add_header(h, "ce_personaldatasubject", es_personal_subject(metadata));

	/*
	 * The event's W3C trace context, as the CloudEvents distributed
	 * tracing extension (ce_traceparent) and as the plain headers that
	 * OpenTelemetry's Kafka instrumentation continues a trace from.
	 */
	if ((trace = container_string(&metadata->root, "traceparent")) != NULL &&
		es_traceparent_valid(trace, &why))
	{
		add_header(h, "ce_traceparent", trace);
		add_header(h, "traceparent", trace);
		if ((trace = container_string(&metadata->root, "tracestate")) != NULL && es_tracestate_valid(trace))
		{
			add_header(h, "ce_tracestate", trace);
			add_header(h, "tracestate", trace);
		}
	}
	return h;
}
