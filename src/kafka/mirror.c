/*-------------------------------------------------------------------------
 *
 * mirror.c
 *	  The Kafka mirror: a worker of its own that produces every committed
 *	  event to Kafka, in commit order, in the database Kafka serves.
 *
 * Events are read in commit order (as es_read_all) from the point produced
 * so far and produced with key = aggregate_id by an idempotent producer,
 * as CloudEvents in binary mode: the event's data is the value, its
 * attributes are ce_* headers.  Up to ultracore_es.kafka_batch_size
 * messages are in flight; each delivery report marks its message, and the
 * mirror's checkpoint (its es_consumers row, "kafka_mirror") advances past
 * the longest prefix of messages all acknowledged.  message.timeout.ms is
 * infinite: while brokers are away, messages wait in librdkafka's bounded
 * queue and the mirror stops producing (back-pressure), nothing is
 * dropped.  A failed delivery or a fatal producer error destroys the
 * producer and produces again from the checkpoint: delivery is
 * at-least-once, and a duplicate carries the same ce_id.  Optionally the
 * producer is transactional: a batch is one Kafka transaction, and the
 * checkpoint passes it once it commits.  Events the ingest appended from a
 * topic (their metadata's kafka_origin) are not produced back into it.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "kafka/kafka.h"

#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/xid8.h"

#include "core/event.h"
#include "core/guc.h"
#include "core/horizon.h"
#include "delivery/consumer.h"
#include "delivery/stats.h"
#include "delivery/worker.h"
#include "read/read.h"

/* Sleep while messages are in flight (their acknowledgements are polled). */
#define KAFKA_BUSY_MS		5

typedef enum
{
	MSG_PENDING, MSG_DELIVERED, MSG_FAILED
} MessageState;

typedef struct InFlight
{
	FullTransactionId tx;
	int64		position;
	TimestampTz committed_at;	/* of the event, for the latency */
	TimestampTz acked_at;
	MessageState state;
} InFlight;

static rd_kafka_t *producer = NULL;
static TimestampTz producer_failed_at = 0;
static bool in_transaction = false;	/* a Kafka transaction is open */

/* Messages in flight, in commit order: message seq is at inflight[seq - base_seq]. */
static InFlight *inflight = NULL;
static int	inflight_size = 0;
static int	ninflight = 0;
static uint64 base_seq = 0;
static bool any_failed = false;
static char failure[512];

/* How far the mirror has read: everything up to here is in flight or acknowledged. */
static FullTransactionId produced_tx;
static int64 produced_position;
static bool produced_known = false;

static void
on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
	uint64		seq = (uint64) (uintptr_t) msg->_private;
	InFlight   *m;

	if (seq < base_seq || seq >= base_seq + (uint64) ninflight)
		return;					/* from before a rewind */
	m = &inflight[seq - base_seq];
	m->acked_at = GetCurrentTimestamp();
	if (msg->err)
	{
		m->state = MSG_FAILED;
		if (!any_failed)
			snprintf(failure, sizeof(failure), "delivery to %s failed: %s",
					 rd_kafka_topic_name(msg->rkt), rd_kafka_err2str(msg->err));
		any_failed = true;
	}
	else
		m->state = MSG_DELIVERED;
}

/* Destroy the producer without waiting for brokers: what is in flight is dropped. */
static void
producer_destroy(void)
{
	if (producer == NULL)
		return;
	rd_kafka_purge(producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
	rd_kafka_poll(producer, 0);
	rd_kafka_destroy_flags(producer, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
	producer = NULL;
	in_transaction = false;
}

/* Start over from the checkpoint: forget what is in flight. */
static void
mirror_rewind(void)
{
	producer_destroy();
	base_seq += ninflight;
	ninflight = 0;
	any_failed = false;
	produced_known = false;
}

static bool
producer_create(void)
{
	char		errstr[512];
	rd_kafka_conf_t *conf = es_kafka_client_conf(es_kafka_producer_properties, errstr, sizeof(errstr));

	if (conf != NULL &&
		(rd_kafka_conf_set(conf, "enable.idempotence", "true", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
		 rd_kafka_conf_set(conf, "message.timeout.ms", "0", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
		 rd_kafka_conf_set(conf, "partitioner", es_kafka_partitioner, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
		 (es_kafka_transactional &&
		  rd_kafka_conf_set(conf, "transactional.id",
							psprintf("ultracore_es-" UINT64_FORMAT "-%s", GetSystemIdentifier(),
									 es_kafka_database_name()),
							errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)))
	{
		rd_kafka_conf_destroy(conf);
		conf = NULL;
	}
	if (conf != NULL)
		rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
	producer = es_kafka_client_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr),
						  "ultracore_es.kafka_producer_properties and ultracore_es.kafka_partitioner");
	if (producer == NULL)
		return false;
	if (rd_kafka_set_log_queue(producer, NULL) != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		producer_destroy();
		ereport(WARNING, (errmsg("ultracore_es kafka: could not forward the producer's logs")));
		return false;
	}
	if (es_kafka_transactional)
	{
		/* Bounded: init_transactions waits for the coordinator; the next pass tries again. */
		rd_kafka_error_t *error = rd_kafka_init_transactions(producer, 1000);

		if (error != NULL)
		{
			snprintf(failure, sizeof(failure), "init_transactions: %s", rd_kafka_error_string(error));
			rd_kafka_error_destroy(error);
			producer_destroy();
			return false;
		}
	}
	return true;
}

/* The topic of an aggregate type: es_kafka_routes, else the prefix and the type. */
typedef struct Route
{
	char		aggregate_type[ES_MAX_NAME_LEN + 1];
	bool		mirrored;
	char		topic[256];
} Route;

static HTAB *routes = NULL;

static EsPlan routes_plan = {
	"SELECT aggregate_type, topic FROM @extschema@.es_kafka_routes",
	0, {InvalidOid}
};

static void
routes_load(void)
{
	HASHCTL		ctl;
	uint64		i;

	/* Read each step, into the step's transaction memory. */
	ctl.keysize = ES_MAX_NAME_LEN + 1;
	ctl.entrysize = sizeof(Route);
	ctl.hcxt = CurrentMemoryContext;
	routes = hash_create("ultracore_es kafka routes", 16, &ctl, HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	if (SPI_execute_plan(es_plan(&routes_plan), NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read es_kafka_routes");
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		char	   *type = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		Datum		topic = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull);
		Route	   *r = hash_search(routes, type, HASH_ENTER, NULL);

		r->mirrored = !isnull;
		if (!isnull)
			strlcpy(r->topic, TextDatumGetCString(topic), sizeof(r->topic));
	}
}

static Route *
route_of(const char *aggregate_type)
{
	bool		found;
	Route	   *r = hash_search(routes, aggregate_type, HASH_ENTER, &found);

	if (!found)
	{
		char	   *c;

		r->mirrored = true;
		snprintf(r->topic, sizeof(r->topic), "%s%s", es_kafka_topic_prefix, aggregate_type);
		for (c = r->topic; *c; c++)
			if (*c == ':')
				*c = '_';		/* not a topic character */
	}
	return r;
}

static void
add_header(rd_kafka_headers_t *h, const char *name, const char *value)
{
	if (value != NULL)
		rd_kafka_header_add(h, name, -1, value, strlen(value));
}

/* RFC 3339, as CloudEvents wants its time. */
static char *
rfc3339(TimestampTz t)
{
	return JsonEncodeDateTime(NULL, TimestampTzGetDatum(t), TIMESTAMPTZOID, NULL);
}

/* The origin topic of an ingested event, from its metadata; NULL for others. */
static char *
origin_topic(Jsonb *metadata)
{
	JsonbValue *origin = getKeyJsonValueFromContainer(&metadata->root, "kafka_origin",
													  strlen("kafka_origin"), NULL);
	JsonbValue *topic;

	if (origin == NULL || origin->type != jbvBinary || !JsonContainerIsObject(origin->val.binary.data))
		return NULL;
	topic = getKeyJsonValueFromContainer(origin->val.binary.data, "topic", strlen("topic"), NULL);
	if (topic == NULL || topic->type != jbvString)
		return NULL;
	return pnstrdup(topic->val.string.val, topic->val.string.len);
}

typedef struct MirrorRead
{
	int			wanted;
	int			read;
	bool		queue_full;
} MirrorRead;

/* es_read_rows callback: produce one event, or account for one not mirrored. */
static void
mirror_event(Datum *values, bool *nulls, void *arg)
{
	MirrorRead *r = (MirrorRead *) arg;
	char	   *aggregate_type = TextDatumGetCString(values[EV_AGGREGATE_TYPE]);
	Route	   *route = route_of(aggregate_type);
	char	   *origin = origin_topic(DatumGetJsonbP(values[EV_METADATA]));
	InFlight   *m;
	uint64		seq;

	if (r->queue_full)
		return;
	if (ninflight == inflight_size)
	{
		inflight_size = Max(inflight_size * 2, 1024);
		inflight = inflight ? repalloc(inflight, sizeof(InFlight) * inflight_size)
			: MemoryContextAlloc(TopMemoryContext, sizeof(InFlight) * inflight_size);
	}
	seq = base_seq + ninflight;
	m = &inflight[ninflight];
	m->tx = DatumGetFullTransactionId(values[EV_TX_ID]);
	m->position = DatumGetInt64(values[EV_POSITION]);
	m->committed_at = es_stats_commit_time(m->tx, DatumGetTimestampTz(values[EV_RECORDED_AT]));
	m->acked_at = 0;
	m->state = MSG_PENDING;

	if (!route->mirrored || (origin != NULL && strcmp(origin, route->topic) == 0))
		m->state = MSG_DELIVERED;	/* not for Kafka, or from this very topic */
	else
	{
		rd_kafka_headers_t *h;
		char	   *aggregate_id = TextDatumGetCString(values[EV_AGGREGATE_ID]);
		char	   *value = JsonbToCString(NULL, &DatumGetJsonbP(values[EV_DATA])->root, 0);
		Jsonb	   *metadata = DatumGetJsonbP(values[EV_METADATA]);
		rd_kafka_resp_err_t err;

		/* Transactional: the batch is one Kafka transaction, begun with its first message. */
		if (es_kafka_transactional && !in_transaction)
		{
			rd_kafka_error_t *error = rd_kafka_begin_transaction(producer);

			if (error != NULL)
			{
				snprintf(failure, sizeof(failure), "begin_transaction: %s", rd_kafka_error_string(error));
				rd_kafka_error_destroy(error);
				any_failed = true;
				r->queue_full = true;
				return;
			}
			in_transaction = true;
		}
		h = rd_kafka_headers_new(12);
		add_header(h, "ce_specversion", "1.0");
		add_header(h, "ce_id", TextDatumGetCString(values[EV_EVENT_ID]));
		add_header(h, "ce_source", es_kafka_own_source());
		add_header(h, "ce_type", TextDatumGetCString(values[EV_EVENT_TYPE]));
		add_header(h, "ce_subject", aggregate_id);
		add_header(h, "ce_time", rfc3339(DatumGetTimestampTz(values[EV_OCCURRED_AT])));
		add_header(h, "content-type", "application/json");
		add_header(h, "ce_aggregatetype", aggregate_type);
		add_header(h, "ce_aggregateversion", psprintf(INT64_FORMAT, DatumGetInt64(values[EV_VERSION])));
		add_header(h, "ce_position", psprintf(INT64_FORMAT, DatumGetInt64(values[EV_POSITION])));
		if (!nulls[EV_CAUSATION_ID])
			add_header(h, "ce_causationid", TextDatumGetCString(values[EV_CAUSATION_ID]));
		if (!nulls[EV_CORRELATION_ID])
			add_header(h, "ce_correlationid", TextDatumGetCString(values[EV_CORRELATION_ID]));
		if (JB_ROOT_COUNT(metadata) > 0)
			add_header(h, "ce_metadata", JsonbToCString(NULL, &metadata->root, 0));

		err = rd_kafka_producev(producer,
								RD_KAFKA_V_TOPIC(route->topic),
								RD_KAFKA_V_KEY(aggregate_id, strlen(aggregate_id)),
								RD_KAFKA_V_VALUE(value, strlen(value)),
								RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
								RD_KAFKA_V_HEADERS(h),
								RD_KAFKA_V_OPAQUE((void *) (uintptr_t) seq),
								RD_KAFKA_V_END);
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			rd_kafka_headers_destroy(h);
			if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL)
			{
				r->queue_full = true;	/* back-pressure: the rest next pass */
				return;
			}
			ereport(ERROR,
					(errmsg("could not produce event to topic \"%s\": %s", route->topic, rd_kafka_err2str(err))));
		}
	}
	ninflight++;
	r->read++;
	produced_tx = m->tx;
	produced_position = m->position;
}

static EsPlan mirror_start_plan = {
	"INSERT INTO @extschema@.es_consumers (name, kind, checkpoint_tx, checkpoint_position)"
	" VALUES ($1, 'kafka', '0', 0) ON CONFLICT (name) DO NOTHING",
	1, {TEXTOID}
};

static EsPlan mirror_load_plan = {
	"SELECT checkpoint_tx, checkpoint_position FROM @extschema@.es_consumers"
	" WHERE name OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}
};

static EsPlan mirror_save_plan = {
	"UPDATE @extschema@.es_consumers"
	"   SET checkpoint_tx = $2, checkpoint_position = $3,"
	"       events_processed = events_processed OPERATOR(pg_catalog.+) $4,"
	"       last_processed_at = pg_catalog.now()"
	" WHERE name OPERATOR(pg_catalog.=) $1",
	4, {TEXTOID, XID8OID, INT8OID, INT8OID}
};

/* The number of messages at the head of inflight all acknowledged. */
static int
acknowledged_prefix(void)
{
	int			done = 0;

	if (in_transaction)
		return 0;				/* a Kafka transaction counts once committed */
	while (done < ninflight && inflight[done].state == MSG_DELIVERED)
		done++;
	return done;
}

/* Messages whose checkpoint mirror_checkpoint_step saved, if it commits. */
static int	checkpointed = 0;

/*
 * The mirror's checkpoint step, in a transaction of its own: past the
 * acknowledged prefix.  A new mirror starts at the first event: Kafka gets
 * the whole store.  The prefix leaves inflight only once this commits.
 */
static void
mirror_checkpoint_step(EsStore *s, void *arg)
{
	Datum		name = CStringGetTextDatum(MIRROR_CONSUMER);
	int			done = acknowledged_prefix();

	if (!produced_known)
	{
		bool		isnull;

		if (SPI_execute_plan(es_plan(&mirror_start_plan), &name, NULL, false, 0) != SPI_OK_INSERT ||
			SPI_execute_plan(es_plan(&mirror_load_plan), &name, NULL, false, 1) != SPI_OK_SELECT ||
			SPI_processed != 1)
			elog(ERROR, "could not read the checkpoint of the Kafka mirror");
		produced_tx = DatumGetFullTransactionId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		produced_position = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
		produced_known = true;
	}
	if (done > 0)
	{
		Datum		args[4];

		args[0] = name;
		args[1] = FullTransactionIdGetDatum(inflight[done - 1].tx);
		args[2] = Int64GetDatum(inflight[done - 1].position);
		args[3] = Int64GetDatum(done);
		if (SPI_execute_plan(es_plan(&mirror_save_plan), args, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not save the checkpoint of the Kafka mirror");
	}
	checkpointed = done;
}

/* After the checkpoint committed: the prefix's latencies, then it leaves inflight. */
static void
mirror_forget(int done)
{
	uint64	   *us = palloc(sizeof(uint64) * done);
	int			nus = 0;
	int			i;

	for (i = 0; i < done; i++)
		if (inflight[i].acked_at > 0)
			us[nus++] = inflight[i].acked_at > inflight[i].committed_at
				? (uint64) (inflight[i].acked_at - inflight[i].committed_at) : 0;
	es_stats_record_applied(MIRROR_CONSUMER, nus, us, GetCurrentTimestamp());
	pfree(us);
	memmove(inflight, inflight + done, sizeof(InFlight) * (ninflight - done));
	ninflight -= done;
	base_seq += done;
}

/*
 * The mirror's produce step, in a transaction of the worker: more events
 * read in commit order from the point produced so far, up to the batch
 * size in flight; a Kafka transaction per batch.
 */
static void
mirror_produce_step(EsStore *s, void *arg)
{
	MirrorRead	r = {es_kafka_batch_size - ninflight, 0, false};
	Datum		args[6];
	char		nulls[6] = {' ', ' ', ' ', 'n', 'n', ' '};

	routes_load();
	args[0] = FullTransactionIdGetDatum(produced_tx);
	args[1] = Int64GetDatum(produced_position);
	args[2] = FullTransactionIdGetDatum(es_commit_horizon_push());
	args[5] = Int32GetDatum(r.wanted);
	es_read_rows(es_commit_order_plan(), args, nulls, true, false, 0, mirror_event, &r);
	PopActiveSnapshot();
	routes = NULL;
}

/*
 * A Kafka transaction is committed when it can be: commit_transaction
 * waits for every message's acknowledgement, so it is tried with a short
 * timeout each pass.  Committed, every message of the batch counts as
 * delivered; aborted or failed, the mirror rewinds.
 */
static void
mirror_commit_transaction(void)
{
	rd_kafka_error_t *error;
	int			i;

	if (!in_transaction)
		return;
	error = rd_kafka_commit_transaction(producer, 50);
	if (error == NULL)
	{
		for (i = 0; i < ninflight; i++)
			inflight[i].state = MSG_DELIVERED;
		in_transaction = false;
		return;
	}
	if (rd_kafka_error_is_retriable(error) || rd_kafka_error_code(error) == RD_KAFKA_RESP_ERR__TIMED_OUT)
	{
		rd_kafka_error_destroy(error);
		return;					/* not yet: brokers are slow or away */
	}
	snprintf(failure, sizeof(failure), "commit_transaction: %s", rd_kafka_error_string(error));
	rd_kafka_error_destroy(error);
	any_failed = true;
}

/* The mirror's part of a pass; true when messages are in flight. */
static bool
mirror_pass(void)
{
	char		fatal[512];

	if (producer == NULL)
	{
		if (producer_failed_at != 0 &&
			!TimestampDifferenceExceeds(producer_failed_at, GetCurrentTimestamp(), RETRY_CLIENT_MS))
			return false;
		if (!producer_create())
		{
			producer_failed_at = GetCurrentTimestamp();
			return false;
		}
		producer_failed_at = 0;
	}
	rd_kafka_poll(producer, 0);
	mirror_commit_transaction();
	if (rd_kafka_fatal_error(producer, fatal, sizeof(fatal)) != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		snprintf(failure, sizeof(failure), "fatal producer error: %s", fatal);
		any_failed = true;
	}
	if (any_failed)
	{
		ereport(LOG,
				(errmsg("ultracore_es kafka: %s; producing again from the mirror's checkpoint", failure)));
		mirror_rewind();
		es_consumer_record_failure(MIRROR_CONSUMER, failure);
		return false;
	}
	/*
	 * Two transactions: a checkpoint is saved even when producing fails
	 * (an event the brokers refuse stops the mirror there, every pass).
	 */
	checkpointed = 0;
	if ((!produced_known || acknowledged_prefix() > 0) &&
		es_kafka_run(MIRROR_CONSUMER, mirror_checkpoint_step) && checkpointed > 0)
		mirror_forget(checkpointed);
	if (produced_known && ninflight < es_kafka_batch_size && !in_transaction)
		es_kafka_run(MIRROR_CONSUMER, mirror_produce_step);
	rd_kafka_poll(producer, 0);
	return ninflight > 0;
}

/* Destroy the producer and forget what was in flight (produced again later). */
static void
mirror_stop(void)
{
	mirror_rewind();
	producer_failed_at = 0;
}

/* The settings the producer is made with: it is made again when they change. */
static char *
mirror_settings(void)
{
	return psprintf("%s|%s|%s|%d", es_kafka_brokers, es_kafka_producer_properties,
					es_kafka_partitioner, (int) es_kafka_transactional);
}

static char *mirror_made_with = NULL;

/*
 * The service's pass, when brokers are configured: come back within a few
 * milliseconds while messages are in flight.  Commits that append wake
 * the worker for the mirror.
 */
static long
mirror_service_pass(bool *reads_appends)
{
	bool		busy;

	if (!es_kafka_configured(&mirror_made_with, mirror_settings(), mirror_stop))
		return es_worker_poll_interval;
	*reads_appends = true;
	busy = mirror_pass();
	es_kafka_emit_logs();
	return busy ? KAFKA_BUSY_MS : es_worker_poll_interval;
}

/* One mirror, in the database Kafka serves, when brokers are configured. */
static int
mirror_wanted(bool kafka_database)
{
	return kafka_database && es_kafka_brokers != NULL && es_kafka_brokers[0] != '\0' ? 1 : 0;
}

static const EsWorkerService mirror_service = {
	.name = "kafka mirror",
	.wanted = mirror_wanted,
	.pass = mirror_service_pass,
	.stop = mirror_stop,
};

/* es_kafka_mirror_init: from _PG_init. */
void
es_kafka_mirror_init(void)
{
	es_worker_add_service(&mirror_service);
}
