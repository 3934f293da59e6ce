/*-------------------------------------------------------------------------
 *
 * kafka.c
 *	  Kafka, from the background workers: the mirror that produces every
 *	  committed event to Kafka in commit order (in the worker), and the
 *	  ingest that appends the messages of Kafka topics to the store (in the
 *	  ingest workers, worker.c).  The only file that talks to librdkafka.
 *
 * Rules (DESIGN.md, "Rules for code that talks to Kafka"):
 *
 *	- Clients are created in the worker, after it started, never in
 *	  _PG_init; every client is destroyed on every way out (es_kafka_stop,
 *	  also from the worker's exit callback), without waiting on brokers.
 *	- Nothing runs PostgreSQL code on librdkafka's threads: logs go to the
 *	  client's queue (log.queue) and are emitted after a poll returns; the
 *	  delivery-report, error and rebalance callbacks, which the polls run on
 *	  the worker's own thread, only record what happened.
 *	- No worker blocks in librdkafka: polls have no timeout, and the workers
 *	  sleep on their latch (the worker a few milliseconds while messages are
 *	  in flight; an ingest worker also on a pipe its consumer queue writes
 *	  to), so SIGTERM stops them at once even while brokers are gone.
 *
 * The mirror.  Events are read in commit order (as es_read_all) from the
 * point produced so far and produced with key = aggregate_id by an
 * idempotent producer, as CloudEvents in binary mode: the event's data is
 * the value, its attributes are ce_* headers.  Up to
 * ultracore_es.kafka_batch_size messages are in flight; each delivery
 * report marks its message, and the mirror's checkpoint (its es_consumers
 * row, "kafka_mirror") advances past the longest prefix of messages all
 * acknowledged.  message.timeout.ms is infinite: while brokers are away,
 * messages wait in librdkafka's bounded queue and the mirror stops
 * producing (back-pressure), nothing is dropped.  A failed delivery or a
 * fatal producer error destroys the producer and produces again from the
 * checkpoint: delivery is at-least-once, and a duplicate carries the same
 * ce_id.  Optionally the producer is transactional: a batch is one Kafka
 * transaction, and the checkpoint passes it once it commits.
 *
 * The ingest.  Each of the ultracore_es.kafka_ingest_workers ingest workers
 * is a consumer in group ultracore_es.kafka_group_id, reading
 * ultracore_es.kafka_ingest_topics; the group shares the partitions among
 * them.  Offsets live in es_kafka_offsets, not in Kafka: on assignment a
 * worker bumps each partition's epoch and seeks to its stored offset; a
 * batch of messages becomes appends (es_append's path, inline projections
 * included) and the new offsets are written in the same transaction, only
 * where the epoch is still the worker's (a worker that lost the partition
 * cannot write).  A batch is appended directly, aggregate by aggregate;
 * if a message fails, the batch is rolled back and appended again with
 * each message in a subtransaction.  A message that cannot be appended (a
 * malformed one, an unknown type, a version conflict, an event id reused
 * with other content) goes to es_kafka_dead_letters, with its topic,
 * partition, offset and error, and the stream goes on; an identical event
 * already stored is absorbed.  Appended events record their origin in
 * their metadata (kafka_origin), and the mirror does not produce them back
 * into the topic they came from.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "append.h"

#include <fcntl.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/xid8.h"

#define MIRROR_CONSUMER		"kafka_mirror"
#define INGEST_CONSUMER		"kafka_ingest"

/* librdkafka's log lines, kept until the worker emits them. */
#define LOG_LINES			64

/* A producer that cannot be created is tried again after this long. */
#define RETRY_CLIENT_MS		5000

/* How often the ingest records the brokers' high watermarks. */
#define WATERMARK_EVERY_MS	1000

static bool kafka_run(const char *consumer_name, void (*step) (EsStore *s, void *arg));

/*-------------------------------------------------------------------------
 * What callbacks record
 *-------------------------------------------------------------------------
 */

static char log_lines[LOG_LINES][512];
static int	log_levels[LOG_LINES];
static int	nlog_lines = 0;
static int	dropped_log_lines = 0;

static char client_error[512];	/* the last error a callback saw */
static bool client_error_new = false;

static void
on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	if (nlog_lines == LOG_LINES)
	{
		dropped_log_lines++;
		return;
	}
	snprintf(log_lines[nlog_lines], sizeof(log_lines[0]), "%s: %s: %s", rd_kafka_name(rk), fac, buf);
	log_levels[nlog_lines++] = level;
}

static void
on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	snprintf(client_error, sizeof(client_error), "%s: %s: %s", rd_kafka_name(rk),
			 rd_kafka_err2name((rd_kafka_resp_err_t) err), reason);
	client_error_new = true;
}

/* Emit what the callbacks recorded; from the worker's loop, after polls. */
static void
emit_logs(void)
{
	int			i;

	for (i = 0; i < nlog_lines; i++)
		ereport(log_levels[i] <= 3 ? WARNING : LOG,
				(errmsg("ultracore_es kafka: %s", log_lines[i])));
	if (dropped_log_lines > 0)
		ereport(LOG,
				(errmsg("ultracore_es kafka: %d more librdkafka log lines dropped", dropped_log_lines)));
	nlog_lines = 0;
	dropped_log_lines = 0;
	if (client_error_new)
		ereport(LOG, (errmsg("ultracore_es kafka: %s", client_error)));
	client_error_new = false;
}

/*-------------------------------------------------------------------------
 * Clients
 *-------------------------------------------------------------------------
 */

/* Set "key=value;key=value" properties on conf; false, with errstr, on the first bad one. */
static bool
set_properties(rd_kafka_conf_t *conf, const char *properties, char *errstr, size_t errlen)
{
	char	   *copy = pstrdup(properties ? properties : "");
	char	   *save = NULL;
	char	   *item;

	for (item = strtok_r(copy, ";", &save); item != NULL; item = strtok_r(NULL, ";", &save))
	{
		char	   *eq = strchr(item, '=');
		char	   *key = item;
		char	   *value;

		if (eq == NULL)
		{
			if (strspn(item, " \t\n") == strlen(item))
				continue;
			snprintf(errstr, errlen, "\"%s\" is not key=value", item);
			return false;
		}
		*eq = '\0';
		value = eq + 1;
		while (*key == ' ' || *key == '\t' || *key == '\n')
			key++;
		while (eq > key && (eq[-1] == ' ' || eq[-1] == '\t'))
			*--eq = '\0';
		while (*value == ' ' || *value == '\t')
			value++;
		if (rd_kafka_conf_set(conf, key, value, errstr, errlen) != RD_KAFKA_CONF_OK)
			return false;
	}
	return true;
}

/* A new configuration with the settings every client of ours has. */
static rd_kafka_conf_t *
client_conf(const char *properties, char *errstr, size_t errlen)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();

	/* The user's properties first: they cannot undo what the rules need. */
	if (rd_kafka_conf_set(conf, "client.id", "ultracore_es", errstr, errlen) != RD_KAFKA_CONF_OK ||
		!set_properties(conf, properties, errstr, errlen) ||
		rd_kafka_conf_set(conf, "bootstrap.servers", es_kafka_brokers, errstr, errlen) != RD_KAFKA_CONF_OK ||
		rd_kafka_conf_set(conf, "log.queue", "true", errstr, errlen) != RD_KAFKA_CONF_OK)
	{
		rd_kafka_conf_destroy(conf);
		return NULL;
	}
	rd_kafka_conf_set_log_cb(conf, on_log);
	rd_kafka_conf_set_error_cb(conf, on_error);
	return conf;
}

/*
 * The client of conf, or NULL with a warning: conf NULL means its settings
 * were refused (errstr says why, hint which settings to check).  conf is
 * freed on failure; rd_kafka_new takes it only on success.
 */
static rd_kafka_t *
client_new(rd_kafka_type_t type, rd_kafka_conf_t *conf, char *errstr, size_t errlen, const char *hint)
{
	const char *what = type == RD_KAFKA_PRODUCER ? "producer" : "consumer";
	rd_kafka_t *rk;

	if (conf == NULL)
	{
		ereport(WARNING,
				(errmsg("ultracore_es kafka: invalid %s setting: %s", what, errstr),
				 errhint("Check %s.", hint)));
		return NULL;
	}
	rk = rd_kafka_new(type, conf, errstr, errlen);
	if (rk == NULL)
	{
		rd_kafka_conf_destroy(conf);
		ereport(WARNING, (errmsg("ultracore_es kafka: could not create the %s: %s", what, errstr)));
	}
	return rk;
}

/*
 * The settings the clients were made with; they are remade when these
 * change.  A worker has the mirror's producer or the ingest's consumer,
 * and only that client's settings count: an ingest worker does not leave
 * its group when the producer's properties change.
 */
static char *client_settings = NULL;

static char *
current_settings(bool ingest)
{
	if (ingest)
		return psprintf("%s|%s|%s|%s", es_kafka_brokers, es_kafka_consumer_properties,
						es_kafka_ingest_topics, es_kafka_group_id);
	return psprintf("%s|%s|%s|%d", es_kafka_brokers, es_kafka_producer_properties,
					es_kafka_partitioner, (int) es_kafka_transactional);
}

/*-------------------------------------------------------------------------
 * The mirror
 *-------------------------------------------------------------------------
 */

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
	rd_kafka_conf_t *conf = client_conf(es_kafka_producer_properties, errstr, sizeof(errstr));

	if (conf != NULL &&
		(rd_kafka_conf_set(conf, "enable.idempotence", "true", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
		 rd_kafka_conf_set(conf, "message.timeout.ms", "0", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
		 rd_kafka_conf_set(conf, "partitioner", es_kafka_partitioner, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
		 (es_kafka_transactional &&
		  rd_kafka_conf_set(conf, "transactional.id",
							psprintf("ultracore_es-" UINT64_FORMAT "-%s", GetSystemIdentifier(),
									 es_worker_database),
							errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)))
	{
		rd_kafka_conf_destroy(conf);
		conf = NULL;
	}
	if (conf != NULL)
		rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
	producer = client_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr),
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

/*
 * The ce_source of what this store mirrors: ultracore_es.kafka_source, or
 * by default one that names this cluster and database, so that the ingest
 * recognizes the store's own events.
 */
static const char *
own_source(void)
{
	static char source[256];

	if (es_kafka_source != NULL && es_kafka_source[0] != '\0')
		return es_kafka_source;
	snprintf(source, sizeof(source), "/ultracore_es/" UINT64_FORMAT "/%s", GetSystemIdentifier(),
			 es_worker_database);
	return source;
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
	m->committed_at = es_shmem_commit_time(m->tx, DatumGetTimestampTz(values[EV_RECORDED_AT]));
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
		add_header(h, "ce_source", own_source());
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
	es_shmem_record_applied(MIRROR_CONSUMER, nus, us, GetCurrentTimestamp());
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
	args[2] = FullTransactionIdGetDatum(es_commit_horizon_of(GetActiveSnapshot()));
	args[5] = Int32GetDatum(r.wanted);
	es_read_rows(es_commit_order_plan(), args, nulls, true, false, 0, mirror_event, &r);
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
		es_worker_record_failure(MIRROR_CONSUMER, failure);
		return false;
	}
	/*
	 * Two transactions: a checkpoint is saved even when producing fails
	 * (an event the brokers refuse stops the mirror there, every pass).
	 */
	checkpointed = 0;
	if ((!produced_known || acknowledged_prefix() > 0) &&
		kafka_run(MIRROR_CONSUMER, mirror_checkpoint_step) && checkpointed > 0)
		mirror_forget(checkpointed);
	if (produced_known && ninflight < es_kafka_batch_size && !in_transaction)
		kafka_run(MIRROR_CONSUMER, mirror_produce_step);
	rd_kafka_poll(producer, 0);
	return ninflight > 0;
}

/*-------------------------------------------------------------------------
 * The ingest
 *-------------------------------------------------------------------------
 */

/* A partition the worker owns, with the epoch it wrote when it got it. */
typedef struct Owned
{
	char		topic[256];
	int32		partition;
	int64		epoch;
	int64		next_offset;	/* after the last message taken */
	bool		touched;		/* by the batch under way */
} Owned;

static rd_kafka_t *consumer = NULL;
static int	wake_pipe[2] = {-1, -1};	/* librdkafka writes, the ingest worker waits */
static TimestampTz consumer_failed_at = 0;
static Owned *owned = NULL;
static int	nowned = 0;
static rd_kafka_topic_partition_list_t *pending_assignment = NULL;
static bool pending_revocation = false;
static TimestampTz watermarks_at = 0;

static void
on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t *partitions,
			 void *opaque)
{
	/* Recorded; acted on after the poll returns (ingest_rebalance). */
	if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS)
	{
		if (pending_assignment != NULL)
			rd_kafka_topic_partition_list_destroy(pending_assignment);
		pending_assignment = rd_kafka_topic_partition_list_copy(partitions);
	}
	else
		pending_revocation = true;
}

static Owned *
owned_find(const char *topic, int32 partition)
{
	int			i;

	for (i = 0; i < nowned; i++)
		if (owned[i].partition == partition && strcmp(owned[i].topic, topic) == 0)
			return &owned[i];
	return NULL;
}

/*
 * Leave the group (so that the partitions are reassigned at once rather
 * than after the session times out), waiting at most a second for brokers
 * that may be gone, then destroy the consumer.
 */
static void
consumer_destroy(void)
{
	if (consumer != NULL)
	{
		rd_kafka_queue_t *queue = rd_kafka_queue_new(consumer);
		rd_kafka_error_t *error = rd_kafka_consumer_close_queue(consumer, queue);
		int			waited;

		if (error != NULL)
			rd_kafka_error_destroy(error);
		else
			for (waited = 0; waited < 1000 && !rd_kafka_consumer_closed(consumer); waited += 10)
			{
				rd_kafka_event_t *event = rd_kafka_queue_poll(queue, 10);

				if (event != NULL)
				{
					/* Revocations during the close: give the partitions up. */
					if (rd_kafka_event_type(event) == RD_KAFKA_EVENT_REBALANCE)
						rd_kafka_assign(consumer, NULL);
					rd_kafka_event_destroy(event);
				}
			}
		rd_kafka_queue_destroy(queue);
		rd_kafka_destroy_flags(consumer, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
		consumer = NULL;
	}
	if (wake_pipe[0] >= 0)
	{
		close(wake_pipe[0]);
		close(wake_pipe[1]);
		wake_pipe[0] = wake_pipe[1] = -1;
	}
	if (pending_assignment != NULL)
		rd_kafka_topic_partition_list_destroy(pending_assignment);
	pending_assignment = NULL;
	pending_revocation = false;
	nowned = 0;
}

static bool
consumer_create(void)
{
	char		errstr[512];
	rd_kafka_conf_t *conf = client_conf(es_kafka_consumer_properties, errstr, sizeof(errstr));
	rd_kafka_topic_partition_list_t *topics;
	rd_kafka_queue_t *queue;
	char	   *copy;
	char	   *save = NULL;
	char	   *topic;
	rd_kafka_resp_err_t err;

	/*
	 * Offsets are ours (es_kafka_offsets), and one out of range (messages
	 * deleted before they were ingested) is an error to see in
	 * es_kafka_status, never a silent jump.
	 */
	if (conf != NULL &&
		(rd_kafka_conf_set(conf, "group.id", es_kafka_group_id, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
		 rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
		 rd_kafka_conf_set(conf, "enable.auto.offset.store", "false", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
		 rd_kafka_conf_set(conf, "auto.offset.reset", "error", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK))
	{
		rd_kafka_conf_destroy(conf);
		conf = NULL;
	}
	/* Assignments are taken whole (rd_kafka_assign): an eager assignor only. */
	if (conf != NULL)
	{
		char		strategy[256];
		size_t		size = sizeof(strategy);

		if (rd_kafka_conf_get(conf, "partition.assignment.strategy", strategy, &size) == RD_KAFKA_CONF_OK &&
			strstr(strategy, "cooperative") != NULL)
		{
			snprintf(errstr, sizeof(errstr), "partition.assignment.strategy \"%s\" is not supported (use range or roundrobin)",
					 strategy);
			rd_kafka_conf_destroy(conf);
			conf = NULL;
		}
	}
	if (conf != NULL)
		rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
	consumer = client_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr),
						  "ultracore_es.kafka_consumer_properties");
	if (consumer == NULL)
		return false;
	/* Logs and errors come with the messages, from the consumer queue. */
	rd_kafka_poll_set_consumer(consumer);
	if (rd_kafka_set_log_queue(consumer, NULL) != RD_KAFKA_RESP_ERR_NO_ERROR)
		elog(ERROR, "could not forward the consumer's logs");
	/* A byte on the pipe when that queue gets something: see es_kafka_ingest_wait_fd. */
	if (pipe2(wake_pipe, O_NONBLOCK | O_CLOEXEC) != 0)
	{
		wake_pipe[0] = wake_pipe[1] = -1;
		ereport(WARNING, (errcode_for_file_access(), errmsg("ultracore_es kafka: could not create a pipe: %m")));
		consumer_destroy();
		return false;
	}
	queue = rd_kafka_queue_get_consumer(consumer);
	if (queue == NULL)			/* no group (an empty group.id) */
	{
		ereport(WARNING,
				(errmsg("ultracore_es kafka: the consumer has no consumer group"),
				 errhint("Set ultracore_es.kafka_group_id.")));
		consumer_destroy();
		return false;
	}
	rd_kafka_queue_io_event_enable(queue, wake_pipe[1], "!", 1);
	rd_kafka_queue_destroy(queue);	/* our reference; the queue stays */
	topics = rd_kafka_topic_partition_list_new(4);
	copy = pstrdup(es_kafka_ingest_topics);
	for (topic = strtok_r(copy, ", ", &save); topic != NULL; topic = strtok_r(NULL, ", ", &save))
		rd_kafka_topic_partition_list_add(topics, topic, RD_KAFKA_PARTITION_UA);
	err = rd_kafka_subscribe(consumer, topics);
	rd_kafka_topic_partition_list_destroy(topics);
	if (err)
	{
		ereport(WARNING, (errmsg("ultracore_es kafka: could not subscribe: %s", rd_kafka_err2str(err))));
		consumer_destroy();
		return false;
	}
	return true;
}

static EsPlan take_partition_plan = {
	"INSERT INTO @extschema@.es_kafka_offsets AS o (group_id, topic, partition, next_offset, epoch)"
	" VALUES ($1, $2, $3, NULL, 1)"
	" ON CONFLICT (group_id, topic, partition) DO UPDATE SET epoch = o.epoch OPERATOR(pg_catalog.+) 1"
	" RETURNING next_offset, epoch",
	3, {TEXTOID, TEXTOID, INT4OID}
};

/* After a poll: take the partitions assigned (bumping their epochs, seeking to their offsets). */
static void
rebalance_step(EsStore *s, void *arg)
{
	rd_kafka_topic_partition_list_t *parts = pending_assignment;
	rd_kafka_resp_err_t err;
	int			i;

	nowned = 0;
	if (parts == NULL)
		return;
	owned = owned ? repalloc(owned, sizeof(Owned) * Max(parts->cnt, 1))
		: MemoryContextAlloc(TopMemoryContext, sizeof(Owned) * Max(parts->cnt, 1));
	for (i = 0; i < parts->cnt; i++)
	{
		rd_kafka_topic_partition_t *p = &parts->elems[i];
		Datum		args[3];
		bool		isnull;
		Datum		next;

		args[0] = CStringGetTextDatum(es_kafka_group_id);
		args[1] = CStringGetTextDatum(p->topic);
		args[2] = Int32GetDatum(p->partition);
		if (SPI_execute_plan(es_plan(&take_partition_plan), args, NULL, false, 0) != SPI_OK_INSERT_RETURNING)
			elog(ERROR, "could not take partition %s[%d]", p->topic, p->partition);
		next = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		p->offset = isnull ? RD_KAFKA_OFFSET_BEGINNING : DatumGetInt64(next);
		strlcpy(owned[nowned].topic, p->topic, sizeof(owned[nowned].topic));
		owned[nowned].partition = p->partition;
		owned[nowned].epoch = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
		owned[nowned].next_offset = isnull ? 0 : DatumGetInt64(next);
		owned[nowned].touched = false;
		nowned++;
	}
	err = rd_kafka_assign(consumer, parts);
	rd_kafka_topic_partition_list_destroy(parts);
	pending_assignment = NULL;
	if (err)
		elog(ERROR, "could not assign the partitions: %s", rd_kafka_err2str(err));
}

/* Messages taken by a pass, appended in one transaction. */
static rd_kafka_message_t **batch = NULL;
static int	batch_allocated = 0;
static int	nbatch = 0;

static void
batch_release(void)
{
	int			i;

	for (i = 0; i < nbatch; i++)
		rd_kafka_message_destroy(batch[i]);
	nbatch = 0;
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
static bool
ingest_parse(rd_kafka_message_t *msg, EsAppendRequest *req, EsEventIn *ev)
{
	rd_kafka_headers_t *h = NULL;
	const char *topic = rd_kafka_topic_name(msg->rkt);
	char	   *version;
	char	   *time;
	char	   *metadata;
	char	   *source;

	(void) rd_kafka_message_headers(msg, &h);
	source = header(h, "ce_source");
	if (source != NULL && strcmp(source, own_source()) == 0)
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

/* Append req as es_append would, appended by the kafka:<topic> it was parsed with. */
static void
ingest_append(EsStore *s, EsAppendRequest *req)
{
	es_append_prepare(req);
	es_append_execute(req, s);
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

static void
ingest_dead_letter(rd_kafka_message_t *msg, const char *error)
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

static EsPlan advance_plan = {
	"UPDATE @extschema@.es_kafka_offsets"
	"   SET next_offset = COALESCE($5, next_offset), high_watermark = COALESCE($6, high_watermark),"
	"       updated_at = pg_catalog.now()"
	" WHERE group_id OPERATOR(pg_catalog.=) $1 AND topic OPERATOR(pg_catalog.=) $2"
	"   AND partition OPERATOR(pg_catalog.=) $3 AND epoch OPERATOR(pg_catalog.=) $4",
	6, {TEXTOID, TEXTOID, INT4OID, INT8OID, INT8OID, INT8OID}
};

static EsPlan ingest_progress_plan = {
	"INSERT INTO @extschema@.es_consumers AS c (name, kind, events_processed, last_processed_at)"
	" VALUES ($1, 'kafka', $2, pg_catalog.now())"
	" ON CONFLICT (name) DO UPDATE SET events_processed = c.events_processed OPERATOR(pg_catalog.+) $2,"
	"     last_processed_at = pg_catalog.now()",
	2, {TEXTOID, INT8OID}
};

/*
 * Errors that say nothing about the message (a deadlock, a serialization
 * failure, a lock timeout, a full disk, a cancel, an internal error): the
 * message must not be dead-lettered for them.
 */
static bool
error_is_transient(int sqlerrcode)
{
	switch (ERRCODE_TO_CATEGORY(sqlerrcode))
	{
		case ERRCODE_TO_CATEGORY(ERRCODE_TRANSACTION_ROLLBACK):
		case ERRCODE_TO_CATEGORY(ERRCODE_INSUFFICIENT_RESOURCES):
		case ERRCODE_TO_CATEGORY(ERRCODE_OPERATOR_INTERVENTION):
		case ERRCODE_TO_CATEGORY(ERRCODE_SYSTEM_ERROR):
		case ERRCODE_TO_CATEGORY(ERRCODE_INTERNAL_ERROR):
			return true;
	}
	return sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE || sqlerrcode == ERRCODE_OBJECT_IN_USE;
}

/*
 * How ingest_step appends: all messages directly (a batch normally fails
 * nowhere), or, after that failed, each in a subtransaction, its failure
 * a dead letter.  Subtransactions only then: a thousand of them in one
 * transaction would overflow its subtransaction cache, and every snapshot
 * of the server would then pay for it while the transaction runs.
 */
static bool ingest_careful = false;

/*
 * Whether the direct path looks the event ids up: after a batch that
 * needed the careful path (duplicates come in bursts, a producer's
 * retries), until a batch succeeds directly.  Otherwise a stored id fails
 * the batch (ingest_directly).
 */
static bool ingest_lookup_ids = false;

/* Set when a batch found a partition's epoch no longer its worker's. */
static bool partition_lost = false;

/* Order of the direct path: by aggregate, then place in the batch; arg is the requests. */
static int
ingest_order(const void *a, const void *b, void *arg)
{
	const EsAppendRequest *reqs = (const EsAppendRequest *) arg;
	int			x = *(const int *) a;
	int			y = *(const int *) b;
	int			c = strcmp(reqs[x].aggregate_id, reqs[y].aggregate_id);

	return c != 0 ? c : (x > y) - (x < y);
}

/*
 * Append the messages directly, as runs: the messages of one aggregate in a
 * batch are appended in their order, and those that follow each other
 * (versions v, v + 1, ..., or all without a version, of one type, from one
 * topic)
 * as one multi-event append.  The aggregate is then locked and checked once
 * per run, and its events go to the heap in one multi-insert, instead of
 * once per message.  A message that cannot be appended fails the batch.
 * So does a message whose event is stored already, unless ingest_lookup_ids:
 * its id is not looked up (ids_unseen; duplicates are rare, the lookup
 * costs every message an index probe), the primary key refuses it, and the
 * careful path then absorbs it.  Across aggregates the events of a batch are
 * appended in aggregate order, not in the order of the partitions' offsets:
 * the store orders events per aggregate, as Kafka orders them per key.
 * That order is also the order in which a batch takes the aggregates'
 * locks, the same in every ingest worker: two of them appending to the
 * same aggregates (messages whose ce_subject is not their key) cannot
 * deadlock.
 */
static void
ingest_directly(EsStore *s, rd_kafka_message_t **msgs, int n)
{
	EsAppendRequest *reqs = palloc(sizeof(EsAppendRequest) * n);
	EsEventIn  *evs = palloc(sizeof(EsEventIn) * n);
	int		   *order = palloc(sizeof(int) * n);
	EsEventInserter *inserter;
	int			nparsed = 0;
	int			first;
	int			last;
	int			i;

	for (i = 0; i < n; i++)
		if (ingest_parse(msgs[i], &reqs[nparsed], &evs[nparsed]))
		{
			order[nparsed] = nparsed;
			nparsed++;
		}
	qsort_arg(order, nparsed, sizeof(int), ingest_order, reqs);
	inserter = es_event_inserter_open(s);
	for (first = 0; first < nparsed; first = last)
	{
		EsAppendRequest run = reqs[order[first]];

		for (last = first + 1; last < nparsed; last++)
		{
			EsAppendRequest *next = &reqs[order[last]];

			if (strcmp(next->aggregate_id, run.aggregate_id) != 0 ||
				strcmp(next->appended_by, run.appended_by) != 0 ||
				strcmp(next->aggregate_type, run.aggregate_type) != 0 ||
				next->any != run.any ||
				(!run.any && next->expected != run.expected + (last - first)))
				break;
		}
		run.nevents = last - first;
		run.ids_unseen = !ingest_lookup_ids;
		run.inserter = inserter;
		run.events = palloc(sizeof(EsEventIn) * run.nevents);
		for (i = 0; i < run.nevents; i++)
			run.events[i] = evs[order[first + i]];
		ingest_append(s, &run);
	}
	es_event_inserter_close(inserter);
}

/* Run append(s, arg) as the store's owner, as es_append does. */
static void
ingest_as_owner(EsStore *s, void (*append) (EsStore *s, void *arg), void *arg)
{
	Oid			save_userid;
	int			save_sec_context;

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(s->owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	append(s, arg);
	SetUserIdAndSecContext(save_userid, save_sec_context);
}

/* The messages a step appends. */
typedef struct IngestTaken
{
	rd_kafka_message_t **msgs;
	int			n;
} IngestTaken;

static void
ingest_directly_step(EsStore *s, void *arg)
{
	IngestTaken *taken = (IngestTaken *) arg;

	ingest_directly(s, taken->msgs, taken->n);
}

static void
ingest_one(EsStore *s, void *arg)
{
	EsAppendRequest req;
	EsEventIn	ev;

	if (ingest_parse((rd_kafka_message_t *) arg, &req, &ev))
		ingest_append(s, &req);
}

static void
ingest_record_cluster(EsStore *s, void *arg)
{
	(void) es_xid_offset(true);
}

typedef struct IngestOne
{
	EsStore    *s;
	rd_kafka_message_t *msg;
} IngestOne;

/* The careful path's subtransaction (its abort restores the user too). */
static void
ingest_one_step(void *arg)
{
	IngestOne  *one = (IngestOne *) arg;

	ingest_as_owner(one->s, ingest_one, one->msg);
}

/*
 * The ingest's step in a transaction of the worker: the messages taken,
 * appended (see ingest_careful), then the partitions' new offsets, only
 * where the epoch is still ours.
 */
static void
ingest_step(EsStore *s, void *arg)
{
	bool		record_watermarks = TimestampDifferenceExceeds(watermarks_at, GetCurrentTimestamp(),
															   WATERMARK_EVERY_MS);
	IngestTaken taken = {palloc(sizeof(rd_kafka_message_t *) * Max(nbatch, 1)), 0};
	int			i;

	for (i = 0; i < nbatch; i++)
	{
		rd_kafka_message_t *msg = batch[i];
		Owned	   *o = owned_find(rd_kafka_topic_name(msg->rkt), msg->partition);

		if (o == NULL)
			continue;			/* revoked meanwhile */
		o->next_offset = msg->offset + 1;
		o->touched = true;
		taken.msgs[taken.n++] = msg;
	}
	if (!ingest_careful)
		ingest_as_owner(s, ingest_directly_step, &taken);
	else
	{
		/*
		 * A store's first append records its cluster (es_xid_offset): in a
		 * subtransaction that fails, the record would be rolled back and
		 * made again by every message after it.
		 */
		ingest_as_owner(s, ingest_record_cluster, NULL);
		for (i = 0; i < taken.n; i++)
		{
			IngestOne	one = {s, taken.msgs[i]};
			ErrorData  *edata = es_subtransaction(ingest_one_step, &one);

			if (edata == NULL)
				continue;
			/* Not the message's fault: the batch is taken again from the stored offsets. */
			if (error_is_transient(edata->sqlerrcode))
				ReThrowError(edata);
			ingest_dead_letter(taken.msgs[i], es_consumer_error_text(edata));
			FreeErrorData(edata);
		}
	}

	for (i = 0; i < nowned; i++)
	{
		Owned	   *o = &owned[i];
		Datum		args[6];
		char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
		int64		low;
		int64		high = -1;

		if (!o->touched && !record_watermarks)
			continue;
		if (record_watermarks)
			(void) rd_kafka_get_watermark_offsets(consumer, o->topic, o->partition, &low, &high);
		args[0] = CStringGetTextDatum(es_kafka_group_id);
		args[1] = CStringGetTextDatum(o->topic);
		args[2] = Int32GetDatum(o->partition);
		args[3] = Int64GetDatum(o->epoch);
		args[4] = Int64GetDatum(o->next_offset);
		nulls[4] = o->touched ? ' ' : 'n';
		args[5] = Int64GetDatum(high);
		nulls[5] = high >= 0 ? ' ' : 'n';
		if (SPI_execute_plan(es_plan(&advance_plan), args, nulls, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not store the offset of %s[%d]", o->topic, o->partition);
		if (SPI_processed != 1)
		{
			partition_lost = true;
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("partition %s[%d] was taken by another consumer", o->topic, o->partition),
					 errdetail("Its epoch is no longer %lld; the messages taken are left to the new owner.",
							   (long long) o->epoch)));
		}
		o->touched = false;
	}
	if (record_watermarks)
		watermarks_at = GetCurrentTimestamp();
	if (nbatch > 0)
	{
		Datum		args[2] = {CStringGetTextDatum(INGEST_CONSUMER), Int64GetDatum(nbatch)};

		if (SPI_execute_plan(es_plan(&ingest_progress_plan), args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not record the ingest's progress");
	}
}

/*
 * After a batch that was not stored: take the partitions owned again from
 * their stored offsets, through the assignment's own path (epochs bumped,
 * the consumer assigned at those offsets; librdkafka drops what it fetched
 * before), and stay in the group: leaving it would stop every member for
 * a rebalance.  Not when a partition was taken by another member (a
 * rebalance is under way: the consumer leaves and joins again), nor with
 * nothing owned or an assignment pending, nor when the assignment fails;
 * false then.
 */
static bool
ingest_rewind(void)
{
	rd_kafka_topic_partition_list_t *parts;
	int			i;

	if (nowned == 0 || pending_assignment != NULL)
		return false;
	parts = rd_kafka_topic_partition_list_new(nowned);
	for (i = 0; i < nowned; i++)
		rd_kafka_topic_partition_list_add(parts, owned[i].topic, owned[i].partition);
	pending_assignment = parts;
	return kafka_run(INGEST_CONSUMER, rebalance_step);
}

/* The ingest's part of a pass; true when it took a full batch (more may be waiting). */
static bool
ingest_pass(void)
{
	rd_kafka_message_t *msg;
	bool		full;
	char		drained[64];

	if (consumer == NULL)
	{
		if (consumer_failed_at != 0 &&
			!TimestampDifferenceExceeds(consumer_failed_at, GetCurrentTimestamp(), RETRY_CLIENT_MS))
			return false;
		if (!consumer_create())
		{
			consumer_failed_at = GetCurrentTimestamp();
			return false;
		}
		consumer_failed_at = 0;
	}
	if (batch_allocated < es_kafka_ingest_batch_size)	/* first pass, or raised on reload */
	{
		if (batch != NULL)
			pfree(batch);
		batch = MemoryContextAlloc(TopMemoryContext, sizeof(rd_kafka_message_t *) * es_kafka_ingest_batch_size);
		batch_allocated = es_kafka_ingest_batch_size;
	}
	/* Emptied before the polls: what arrives after them writes again. */
	while (read(wake_pipe[0], drained, sizeof(drained)) > 0)
		;
	while (nbatch < es_kafka_ingest_batch_size && (msg = rd_kafka_consumer_poll(consumer, 0)) != NULL)
	{
		if (pending_revocation)
		{
			/* Give the partitions up; what was taken from them is left to their next owner. */
			rd_kafka_assign(consumer, NULL);
			nowned = 0;
			pending_revocation = false;
		}
		if (msg->err)
		{
			if (msg->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
			{
				snprintf(client_error, sizeof(client_error), "consumer: %s", rd_kafka_message_errstr(msg));
				client_error_new = true;
			}
			rd_kafka_message_destroy(msg);
			continue;
		}
		batch[nbatch++] = msg;
	}
	if (pending_revocation)
	{
		rd_kafka_assign(consumer, NULL);
		nowned = 0;
		pending_revocation = false;
	}
	if (pending_assignment != NULL)
		kafka_run(INGEST_CONSUMER, rebalance_step);
	full = (nbatch == es_kafka_ingest_batch_size);
	if (nbatch > 0 || (nowned > 0 && TimestampDifferenceExceeds(watermarks_at, GetCurrentTimestamp(),
																 WATERMARK_EVERY_MS)))
	{
		int			sqlerrcode;
		char	   *error;
		bool		ok;

		ingest_careful = false;
		partition_lost = false;
		ok = es_worker_transaction(ingest_step, NULL, false, NULL, &sqlerrcode, &error);
		ingest_lookup_ids = !ok;
		if (!ok && !error_is_transient(sqlerrcode))
		{
			/* A message failed: the batch again, its failures dead letters. */
			ingest_careful = true;
			ok = kafka_run(INGEST_CONSUMER, ingest_step);
			ingest_careful = false;
		}
		else if (!ok)
		{
			ereport(LOG, (errcode(sqlerrcode), errmsg("ultracore_es kafka: %s", error)));
			es_worker_record_failure(INGEST_CONSUMER, error);
		}
		if (!ok)
		{
			/* Not stored: start again from the stored offsets. */
			batch_release();
			if (partition_lost || !ingest_rewind())
				consumer_destroy();
			return false;
		}
	}
	batch_release();
	return full;
}

/*-------------------------------------------------------------------------
 * The worker's interface
 *-------------------------------------------------------------------------
 */

/*
 * kafka_run: a step in a transaction of its own (es_worker_transaction);
 * an error is logged and recorded on the consumer's row.
 */
static bool
kafka_run(const char *consumer_name, void (*step) (EsStore *s, void *arg))
{
	char	   *error;

	if (es_worker_transaction(step, NULL, true, NULL, NULL, &error))
		return true;
	es_worker_record_failure(consumer_name, error);
	return false;
}

/*
 * Whether brokers are configured.  When the settings the worker's client
 * (the ingest's consumer, or the mirror's producer) was made with changed,
 * the clients are destroyed, to be made again with the new ones; when
 * Kafka is off, they are destroyed for good.
 */
static bool
kafka_configured(bool ingest)
{
	char	   *settings;

	if (es_kafka_brokers == NULL || es_kafka_brokers[0] == '\0')
	{
		es_kafka_stop();
		return false;
	}
	settings = current_settings(ingest);
	if (client_settings == NULL || strcmp(settings, client_settings) != 0)
	{
		es_kafka_stop();
		client_settings = MemoryContextStrdup(TopMemoryContext, settings);
	}
	return true;
}

/*
 * es_kafka_mirror_pass: one pass of the mirror (the main worker), when
 * brokers are configured.  Returns true when the worker should come back
 * soon: messages in flight.
 */
bool
es_kafka_mirror_pass(void)
{
	bool		busy;

	if (!kafka_configured(false))
		return false;
	pgstat_report_activity(STATE_RUNNING, "ultracore_es: kafka mirror");
	busy = mirror_pass();
	emit_logs();
	return busy;
}

/*
 * es_kafka_ingest_pass: one pass of the ingest (an ingest worker, which
 * calls it only when topics to ingest are set).  Returns true when the
 * worker should come back soon: it took a full batch, more may be waiting.
 */
bool
es_kafka_ingest_pass(void)
{
	bool		busy;

	if (!kafka_configured(true))
		return false;
	pgstat_report_activity(STATE_RUNNING, "ultracore_es: kafka ingest");
	busy = ingest_pass();
	emit_logs();
	return busy;
}

/*
 * es_kafka_ingest_wait_fd: a descriptor that becomes readable when the
 * ingest's consumer has something to poll (messages, a rebalance, logs),
 * for an ingest worker to sleep on with its latch; -1 without a consumer.
 * librdkafka writes to it when the consumer queue stops being empty, so
 * the worker ingests a message as it arrives, not at its next poll
 * interval.
 */
int
es_kafka_ingest_wait_fd(void)
{
	return consumer != NULL ? wake_pipe[0] : -1;
}

/* es_kafka_stop: destroy the clients (what is in flight is produced again later). */
void
es_kafka_stop(void)
{
	mirror_rewind();
	batch_release();
	consumer_destroy();
	if (client_settings != NULL)
		pfree(client_settings);
	client_settings = NULL;
	producer_failed_at = 0;
	consumer_failed_at = 0;
}
