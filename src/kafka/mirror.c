/*-------------------------------------------------------------------------
 *
 * mirror.c
 *	  The Kafka mirror: a worker of its own that produces every committed
 *	  event to Kafka, in commit order, in the database Kafka serves.
 *
 * Events are read in commit order (as es_read_all) from the point produced
 * so far and produced with key = aggregate_id by an idempotent producer,
 * as CloudEvents in binary mode: the event's data is the value, its
 * attributes are ce_* headers (mirror_message.c).  Up to ultracore_es.kafka_batch_size
 * messages are in flight; each delivery report marks its message, and the
 * mirror's checkpoint (its es_consumers row, "kafka_mirror") advances past
 * the longest prefix of messages all acknowledged.  message.timeout.ms is
 * infinite: while brokers are away, messages wait in librdkafka's bounded
 * queue and the mirror stops producing (back-pressure), nothing is
 * dropped.  A message refused for good (too large, a topic that does not
 * exist or that the mirror may not write) is parked instead: recorded in
 * es_kafka_mirror_dead_letters by the checkpoint that passes it, and the
 * rest of the stream goes on.  Any other failed delivery, or a fatal
 * producer error, destroys the producer and produces again from the
 * checkpoint, after a backoff that doubles while failures repeat: delivery
 * is at-least-once, and a duplicate carries the same ce_id.  Optionally the
 * producer is transactional: a batch is one Kafka transaction, and the
 * checkpoint passes it once it commits.  Events the ingest appended from a
 * topic (their metadata's kafka_origin) are not produced back into it.
 *
 * Across a failover: with ultracore_es.kafka_standby_slots, a batch read is
 * held until those standbys have flushed the WAL past its commits
 * (standby.c), so that Kafka never gets an event a promoted standby lacks;
 * and the mirror runs only while this server's timeline is the newest to
 * claim the store on the fence topic (fence.c).
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "kafka/kafka.h"

#include <fcntl.h>
#include <unistd.h>

#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/xid8.h"

#include "core/event.h"
#include "core/guc.h"
#include "core/horizon.h"
#include "core/validate.h"
#include "delivery/consumer.h"
#include "delivery/stats.h"
#include "delivery/worker.h"
#include "privacy/personal_data.h"
#include "read/commit_point.h"
#include "read/read.h"

/*
 * Sleep while messages are in flight, at most: their acknowledgements
 * wake the worker (wake_pipe) as they arrive.
 */
#define KAFKA_BUSY_MS		5

/*
 * A topic's metadata is asked before its first message: one Kafka refuses
 * (no ACL for the mirror, an invalid name) gets no message, its events are
 * parked.  librdkafka would keep such messages waiting for the topic, for
 * ever (message.timeout.ms is infinite), and the mirror with them.  A
 * refused topic is asked again after TOPIC_RECHECK_MS; a message waiting
 * longer than TOPIC_STALL_MS at the head of the window, its topic's too.
 */
#define TOPIC_METADATA_MS	2000
#define TOPIC_RECHECK_MS	10000
#define TOPIC_STALL_MS		10000

typedef struct TopicState
{
	char		topic[256];		/* the key */
	rd_kafka_resp_err_t refused;	/* RD_KAFKA_RESP_ERR_NO_ERROR: takes messages */
	TimestampTz checked_at;

	/*
	 * The producer's handle of the topic, made at its first message and
	 * destroyed with the producer: a message produced by the topic's name
	 * had librdkafka look the topic up under a lock, every message.
	 */
	rd_kafka_topic_t *handle;
} TopicState;

static HTAB *topics = NULL;

/*
 * When the producer was last polled: the time its delivery reports
 * (on_delivery) arrived, to within a poll, without a clock read each.
 */
static TimestampTz polled_at = 0;

/* Backoff after a failed delivery: doubled from the first up to the last. */
#define BACKOFF_FIRST_MS	100
#define BACKOFF_MAX_MS		30000

typedef enum
{
	MSG_PENDING, MSG_DELIVERED, MSG_PARKED, MSG_FAILED
} MessageState;

typedef struct InFlight
{
	FullTransactionId tx;
	int64		position;
	int64		seq;			/* its row in the commit log, when read there */
	TimestampTz committed_at;	/* of the event, for the latency */
	TimestampTz acked_at;
	MessageState state;
	char	   *refusal;		/* parked: "topic\nerror", malloc'd */
	TimestampTz produced_at;
	TopicState *topic;			/* NULL: no message */
	/* A message read and not sent yet (value NULL: nothing to send). */
	char	   *key;			/* in value's allocation, after it */
	char	   *value;			/* malloc'd */
	size_t		value_len;
	rd_kafka_headers_t *headers;
} InFlight;

static rd_kafka_t *producer = NULL;
static int	wake_pipe[2] = {-1, -1};	/* librdkafka writes when the producer has reports */
static TimestampTz producer_failed_at = 0;
static bool in_transaction = false;	/* a Kafka transaction is open */
static bool transactions_ready = false; /* not transactional, or init_transactions done */

/* Messages in flight, in commit order: message seq is at inflight[seq - base_seq]. */
static InFlight *inflight = NULL;
static int	inflight_size = 0;
static int	ninflight = 0;
static uint64 base_seq = 0;
static int	nsent = 0;			/* the first nsent are in librdkafka's hands (or need not be) */
static XLogRecPtr held_lsn = InvalidXLogRecPtr; /* the others wait for the standbys to pass it */
static TimestampTz held_since = 0;
static bool any_failed = false;
static char failure[512];

/* After a failed delivery: no producing before this, and the next delay. */
static TimestampTz backoff_until = 0;
static int	backoff_ms = 0;

/*
 * Events refused for good whose checkpoint is not saved yet, by position:
 * read again after a rewind (an aborted Kafka transaction), they are parked
 * at once rather than sent to be refused again.
 */
typedef struct Refused
{
	int64		position;
	char	   *refusal;		/* malloc'd */
} Refused;

static Refused *refused = NULL;
static int	nrefused = 0;
static int	refused_size = 0;

/*
 * How far the mirror has read (everything up to there is in flight or
 * acknowledged), and its checkpoint as saved (commit_point.c): the same
 * point once nothing is in flight.  Their skip sets live in point_cxt.
 */
static EsCommitPoint produced;
static EsCommitPoint saved;
static bool produced_known = false;
static MemoryContext point_cxt = NULL;

/*
 * Whether Kafka refuses a message for good: sending it again cannot
 * succeed until someone changes the settings, the topic or its ACLs.
 */
static bool
refused_for_good(rd_kafka_resp_err_t err)
{
	switch (err)
	{
		case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
		case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
		case RD_KAFKA_RESP_ERR_INVALID_RECORD:
		case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
		case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
		case RD_KAFKA_RESP_ERR_POLICY_VIOLATION:
		case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
		case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
		case RD_KAFKA_RESP_ERR__INVALID_ARG:
			return true;
		default:
			return false;
	}
}

/* "topic\nerror", malloc'd: made in librdkafka's callback, where no error may be raised. */
static char *
refusal_of(const char *topic, rd_kafka_resp_err_t err)
{
	const char *error = rd_kafka_err2str(err);
	size_t		len = strlen(topic) + strlen(error) + 2;
	char	   *r = malloc(len);

	if (r != NULL)
		snprintf(r, len, "%s\n%s", topic, error);
	return r;
}

/* Park message m, refused for good; remembered across a rewind. */
static void
mirror_park(InFlight *m, char *refusal)
{
	m->state = MSG_PARKED;
	m->refusal = refusal;
	if (refusal == NULL)
		return;
	if (nrefused == refused_size)
	{
		int			size = Max(refused_size * 2, 16);
		Refused    *grown = realloc(refused, sizeof(Refused) * size);

		if (grown == NULL)
			return;				/* sent again after a rewind, and refused again */
		refused = grown;
		refused_size = size;
	}
	if ((refused[nrefused].refusal = strdup(refusal)) != NULL)
		refused[nrefused++].position = m->position;
}

static void
on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
	uint64		seq = (uint64) (uintptr_t) msg->_private;
	InFlight   *m;

	if (seq < base_seq || seq >= base_seq + (uint64) ninflight)
		return;					/* from before a rewind */
	m = &inflight[seq - base_seq];
	m->acked_at = polled_at;
	if (msg->err && refused_for_good(msg->err))
		mirror_park(m, refusal_of(rd_kafka_topic_name(msg->rkt), msg->err));
	else if (msg->err)
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

/* Serve the producer's delivery reports and logs that arrived. */
static void
producer_poll(void)
{
	polled_at = GetCurrentTimestamp();
	rd_kafka_poll(producer, 0);
}

/* Destroy the producer without waiting for brokers: what is in flight is dropped. */
static void
producer_destroy(void)
{
	if (producer == NULL)
		return;
	rd_kafka_purge(producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
	producer_poll();
	if (topics != NULL)
	{
		HASH_SEQ_STATUS seq;
		TopicState *t;

		/* Before the producer: it is destroyed once no handle refers to it. */
		hash_seq_init(&seq, topics);
		while ((t = hash_seq_search(&seq)) != NULL)
		{
			if (t->handle != NULL)
				rd_kafka_topic_destroy(t->handle);
			t->handle = NULL;
		}
	}
	rd_kafka_destroy_flags(producer, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
	producer = NULL;
	in_transaction = false;
	transactions_ready = false;
	if (wake_pipe[0] >= 0)
	{
		close(wake_pipe[0]);
		close(wake_pipe[1]);
		wake_pipe[0] = wake_pipe[1] = -1;
	}
}

/* Free what a message not sent holds. */
static void
unsent_free(InFlight *m)
{
	free(m->value);
	if (m->headers != NULL)
		rd_kafka_headers_destroy(m->headers);
	m->key = m->value = NULL;
	m->headers = NULL;
}

/* Forget the first n messages in flight. */
static void
inflight_drop(int n)
{
	int			i;

	for (i = 0; i < n; i++)
	{
		free(inflight[i].refusal);
		unsent_free(&inflight[i]);
	}
	memmove(inflight, inflight + n, sizeof(InFlight) * (ninflight - n));
	ninflight -= n;
	nsent = Max(nsent - n, 0);
	base_seq += n;
}

/* Start over from the checkpoint: forget what is in flight. */
static void
mirror_rewind(void)
{
	producer_destroy();
	inflight_drop(ninflight);
	any_failed = false;
	produced_known = false;
}

/* What an event read again was refused with, taken from the list; NULL: not refused. */
static char *
refused_take(int64 position)
{
	int			i;

	for (i = 0; i < nrefused; i++)
		if (refused[i].position == position)
		{
			char	   *r = refused[i].refusal;

			refused[i] = refused[--nrefused];
			return r;
		}
	return NULL;
}

/* The checkpoint passed position: the refusals up to it are recorded. */
static void
refused_forget(int64 position)
{
	int			i = 0;

	while (i < nrefused)
		if (refused[i].position <= position)
		{
			free(refused[i].refusal);
			refused[i] = refused[--nrefused];
		}
		else
			i++;
}

/*
 * The producer, made with ultracore_es.kafka_producer_properties and then
 * what the mirror's promises need, which those cannot change: idempotence,
 * no message given up on, a delivery report for every message (its
 * checkpoint moves on them), the partitioner of ultracore_es.kafka_partitioner,
 * and a transactional id only with ultracore_es.kafka_transactional (one in
 * the properties without it would make the producer refuse every message
 * outside a transaction, which the mirror never begins then).
 */
static bool
producer_create(void)
{
	char		errstr[512];
	char		transactional_id[512];
	size_t		size = sizeof(transactional_id);
	rd_kafka_conf_t *conf = es_kafka_client_conf(es_kafka_producer_properties, errstr, sizeof(errstr));

	if (conf != NULL && !es_kafka_transactional &&
		rd_kafka_conf_get(conf, "transactional.id", transactional_id, &size) == RD_KAFKA_CONF_OK &&
		transactional_id[0] != '\0')
	{
		snprintf(errstr, sizeof(errstr),
				 "transactional.id is set, but ultracore_es.kafka_transactional is off (it sets the mirror's)");
		rd_kafka_conf_destroy(conf);
		conf = NULL;
	}
	if (conf != NULL &&
		(rd_kafka_conf_set(conf, "enable.idempotence", "true", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
		 rd_kafka_conf_set(conf, "message.timeout.ms", "0", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
		 rd_kafka_conf_set(conf, "delivery.report.only.error", "false", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
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

	/*
	 * A byte on the pipe when the main queue (delivery reports, logs) gets
	 * something: the worker sleeps on it (mirror_wait_fd) and takes each
	 * acknowledgement as it comes, where a poll every KAFKA_BUSY_MS left the
	 * producer waiting on the mirror.
	 */
	if (pipe2(wake_pipe, O_NONBLOCK | O_CLOEXEC) != 0)
	{
		wake_pipe[0] = wake_pipe[1] = -1;
		ereport(WARNING, (errcode_for_file_access(), errmsg("ultracore_es kafka: could not create a pipe: %m")));
		producer_destroy();
		return false;
	}
	else
	{
		rd_kafka_queue_t *queue = rd_kafka_queue_get_main(producer);

		rd_kafka_queue_io_event_enable(queue, wake_pipe[1], "!", 1);
		rd_kafka_queue_destroy(queue);	/* our reference; the queue stays */
	}
	transactions_ready = !es_kafka_transactional;
	return true;
}

/*
 * A transactional producer's init_transactions, a little at each pass: it
 * finds the coordinator and takes the producer id, round trips to the
 * brokers that take seconds over a long distance, and a call that times
 * out is resumed by the next one on the same producer.  A producer made
 * again after each call of a second never started where the brokers
 * answered in 200 ms.  A failure that resuming cannot mend is the pass's.
 */
static void
producer_init_transactions(void)
{
	rd_kafka_error_t *error = rd_kafka_init_transactions(producer, 50);

	if (error == NULL)
		transactions_ready = true;
	else if (!rd_kafka_error_is_retriable(error))
	{
		snprintf(failure, sizeof(failure), "init_transactions: %s", rd_kafka_error_string(error));
		any_failed = true;
	}
	if (error != NULL)
		rd_kafka_error_destroy(error);
}

/* Whether the brokers refuse topic for good, as its metadata says; NO_ERROR when unknown. */
static rd_kafka_resp_err_t
topic_metadata_refusal(const char *topic)
{
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(producer, topic, NULL);
	const struct rd_kafka_metadata *md;
	rd_kafka_resp_err_t refusal = RD_KAFKA_RESP_ERR_NO_ERROR;

	if (rkt == NULL)
		return RD_KAFKA_RESP_ERR_NO_ERROR;
	if (rd_kafka_metadata(producer, 0, rkt, &md, TOPIC_METADATA_MS) == RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		if (md->topic_cnt == 1 &&
			(md->topics[0].err == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED ||
			 md->topics[0].err == RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION))
			refusal = md->topics[0].err;
		rd_kafka_metadata_destroy(md);
	}
	rd_kafka_topic_destroy(rkt);
	return refusal;
}

/*
 * The state of topic: asked of the brokers the first time, and again when
 * it was refused (or recheck) and TOPIC_RECHECK_MS passed.
 */
static TopicState *
topic_state(const char *topic, bool recheck)
{
	TopicState *t;
	bool		found;

	if (topics == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(((TopicState *) NULL)->topic);
		ctl.entrysize = sizeof(TopicState);
		topics = hash_create("ultracore_es kafka topics", 16, &ctl, HASH_ELEM | HASH_STRINGS);
	}
	t = hash_search(topics, topic, HASH_ENTER, &found);
	if (!found)
		t->handle = NULL;
	if (!found || ((t->refused != RD_KAFKA_RESP_ERR_NO_ERROR || recheck) &&
				   TimestampDifferenceExceeds(t->checked_at, GetCurrentTimestamp(), TOPIC_RECHECK_MS)))
	{
		rd_kafka_resp_err_t refused = topic_metadata_refusal(topic);

		if (refused != RD_KAFKA_RESP_ERR_NO_ERROR && (!found || t->refused == RD_KAFKA_RESP_ERR_NO_ERROR))
			ereport(LOG,
					(errmsg("ultracore_es kafka: topic %s refuses the mirror's messages: %s; its events are parked",
							topic, rd_kafka_err2str(refused))));
		t->refused = refused;
		t->checked_at = GetCurrentTimestamp();
	}
	return t;
}

/*
 * A message waiting at the head of the window for long: when its topic
 * turned out to refuse the mirror, produce again from the checkpoint (the
 * topic's events are parked this time).
 */
static void
mirror_check_stall(void)
{
	InFlight   *head = nsent > 0 ? &inflight[0] : NULL;

	if (head == NULL || head->state != MSG_PENDING || head->topic == NULL ||
		!TimestampDifferenceExceeds(head->produced_at, GetCurrentTimestamp(), TOPIC_STALL_MS))
		return;
	head->produced_at = GetCurrentTimestamp();	/* asked again in TOPIC_STALL_MS at the soonest */
	if (topic_state(head->topic->topic, true)->refused == RD_KAFKA_RESP_ERR_NO_ERROR)
		return;
	snprintf(failure, sizeof(failure), "topic %s refuses the mirror's messages: %s", head->topic->topic,
			 rd_kafka_err2str(head->topic->refused));
	any_failed = true;
}

/* The topic of an aggregate type: es_kafka_routes, else the prefix and the type. */
typedef struct Route
{
	char		aggregate_type[ES_MAX_NAME_LEN + 1];
	bool		mirrored;
	char		topic[256];
	TopicState *state;			/* the topic's, asked once per step */
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
		r->state = NULL;
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
		r->state = NULL;
		snprintf(r->topic, sizeof(r->topic), "%s%s", es_kafka_topic_prefix, aggregate_type);
		for (c = r->topic; *c; c++)
			if (*c == ':')
				*c = '_';		/* not a topic character */
	}
	return r;
}

typedef struct MirrorRead
{
	int			wanted;
	int			read;
	Route	   *last;			/* the route of the last event read */
	const EsCommitRead *commit_read;
} MirrorRead;

/*
 * The memory of the event being read, emptied after each: a batch of
 * 10,000 events made 10 MB of strings in the step's memory, which came
 * from malloc and went back to it each step.
 */
static MemoryContext message_cxt = NULL;

/* The route of aggregate type type: the last event's, most often. */
static Route *
mirror_route(MirrorRead *r, text *type)
{
	size_t		len = VARSIZE_ANY_EXHDR(type);

	if (r->last == NULL || len > ES_MAX_NAME_LEN || r->last->aggregate_type[len] != '\0' ||
		memcmp(r->last->aggregate_type, VARDATA_ANY(type), len) != 0)
		r->last = route_of(text_to_cstring(type));
	return r->last;
}

/* The state of a route's topic, asked at its first message of the step. */
static TopicState *
route_topic(Route *route)
{
	if (route->state == NULL)
		route->state = topic_state(route->topic, false);
	return route->state;
}

/*
 * The data a message carries: its personal fields as stored (sealed), left
 * out, or opened, after ultracore_es.kafka_personal_data.
 */
static Jsonb *
mirror_data(Datum *values)
{
	Jsonb	   *data = DatumGetJsonbP(values[EV_DATA]);
	Jsonb	   *metadata = DatumGetJsonbP(values[EV_METADATA]);

	switch ((EsKafkaPersonalData) es_kafka_personal_data)
	{
		case ES_KAFKA_PERSONAL_OMIT:
			return es_personal_omitted(data, metadata);
		case ES_KAFKA_PERSONAL_PLAIN:
			return es_personal_revealed(es_store_resolved(), data, metadata);
		case ES_KAFKA_PERSONAL_ENCRYPTED:
			break;
	}
	return data;
}

/* es_read_rows callback: produce one event, or account for one not mirrored. */
static void
mirror_event(Datum *values, bool *nulls, void *arg)
{
	MirrorRead *r = (MirrorRead *) arg;
	MemoryContext caller_cxt = MemoryContextSwitchTo(message_cxt);
	Route	   *route = mirror_route(r, DatumGetTextPP(values[EV_AGGREGATE_TYPE]));
	char	   *origin = es_kafka_event_origin(DatumGetJsonbP(values[EV_METADATA]), "topic");
	InFlight   *m;

	if (ninflight == inflight_size)
	{
		int			size = Max(inflight_size * 2, 1024);

		/* The size changes once the memory is there: an error leaves both as they were. */
		inflight = inflight ? repalloc(inflight, sizeof(InFlight) * size)
			: MemoryContextAlloc(TopMemoryContext, sizeof(InFlight) * size);
		inflight_size = size;
	}
	m = &inflight[ninflight];
	m->tx = DatumGetFullTransactionId(values[EV_TX_ID]);
	m->position = DatumGetInt64(values[EV_POSITION]);
	m->seq = r->commit_read->seq;
	m->committed_at = es_stats_commit_time(m->tx, DatumGetTimestampTz(values[EV_RECORDED_AT]));
	m->acked_at = 0;
	m->state = MSG_PENDING;
	m->refusal = NULL;
	m->topic = NULL;
	m->key = m->value = NULL;
	m->headers = NULL;

	if (!route->mirrored || (origin != NULL && strcmp(origin, route->topic) == 0))
		m->state = MSG_DELIVERED;	/* not for Kafka, or from this very topic */
	else if (nrefused > 0 && (m->refusal = refused_take(m->position)) != NULL)
		mirror_park(m, m->refusal); /* refused before a rewind: not sent again */
	else if ((m->topic = route_topic(route))->refused != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		mirror_park(m, refusal_of(route->topic, m->topic->refused));
		m->acked_at = GetCurrentTimestamp();
	}
	else
	{
		text	   *aggregate_id = DatumGetTextPP(values[EV_AGGREGATE_ID]);
		size_t		key_len = VARSIZE_ANY_EXHDR(aggregate_id);
		char	   *value = JsonbToCString(NULL, &mirror_data(values)->root, 0);

		/*
		 * Sent by mirror_send, in order.  One allocation holds the value and
		 * then the key: librdkafka copies the key when it takes the
		 * message, and frees the value (the whole block) once it is done.
		 * Made last, after what can fail: this entry is not counted yet,
		 * and what an error left in it would never be freed.
		 */
		m->headers = es_kafka_mirror_headers(values, nulls, route->aggregate_type);
		m->value_len = strlen(value);
		m->value = malloc(m->value_len + key_len + 2);
		if (m->value == NULL)
		{
			rd_kafka_headers_destroy(m->headers);
			m->headers = NULL;
			ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
		}
		memcpy(m->value, value, m->value_len + 1);
		m->key = m->value + m->value_len + 1;
		memcpy(m->key, VARDATA_ANY(aggregate_id), key_len);
		m->key[key_len] = '\0';
	}
	ninflight++;
	r->read++;
	es_commit_point_passed(&produced, m->tx, m->position, m->seq);
	MemoryContextSwitchTo(caller_cxt);
	MemoryContextReset(message_cxt);
}

static EsPlan mirror_start_plan = {
	"INSERT INTO @extschema@.es_consumers (name, kind, checkpoint_tx, checkpoint_position)"
	" VALUES ($1, 'kafka', '0', 0) ON CONFLICT (name) DO NOTHING",
	1, {TEXTOID}
};

static EsPlan mirror_load_plan = {
	"SELECT checkpoint_tx, checkpoint_position, log_seq, log_position, log_skip, log_skip_until"
	"  FROM @extschema@.es_consumers"
	" WHERE name OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}
};

static EsPlan mirror_save_plan = {
	"UPDATE @extschema@.es_consumers"
	"   SET checkpoint_tx = $2, checkpoint_position = $3,"
	"       events_processed = events_processed OPERATOR(pg_catalog.+) $4,"
	"       last_processed_at = CASE WHEN $4 OPERATOR(pg_catalog.>) 0 THEN pg_catalog.now() ELSE last_processed_at END,"
	"       log_seq = $5, log_position = $6, log_skip = $7, log_skip_until = $8"
	" WHERE name OPERATOR(pg_catalog.=) $1",
	8, {TEXTOID, XID8OID, INT8OID, INT8OID, INT8OID, INT8OID, INT8ARRAYOID, XID8OID}
};

/* Save the checkpoint, past done more messages. */
static void
mirror_save(int64 done)
{
	Datum		args[8];
	char		nulls[8];

	memset(nulls, ' ', sizeof(nulls));
	args[0] = CStringGetTextDatum(MIRROR_CONSUMER);
	args[1] = FullTransactionIdGetDatum(saved.tx);
	args[2] = Int64GetDatum(saved.position);
	args[3] = Int64GetDatum(done);
	es_commit_point_log_args(&saved, args + 4, nulls + 4);
	if (SPI_execute_plan(es_plan(&mirror_save_plan), args, nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not save the checkpoint of the Kafka mirror");
}

/*
 * The saved point just loaded, switched modes or moved up, with nothing in
 * flight: the mirror reads on from it.  Its skip set (made in the step's
 * memory, or the one kept already) is copied into a new point_cxt before
 * the old one goes.
 */
static void
mirror_point_keep(void)
{
	MemoryContext old_cxt = point_cxt;

	point_cxt = AllocSetContextCreate(TopMemoryContext, "ultracore_es mirror point", ALLOCSET_SMALL_SIZES);
	if (saved.nskip > 0)
	{
		int64	   *skip = MemoryContextAlloc(point_cxt, sizeof(int64) * saved.nskip);

		memcpy(skip, saved.skip, sizeof(int64) * saved.nskip);
		saved.skip = skip;
	}
	if (old_cxt != NULL)
		MemoryContextDelete(old_cxt);
	produced = saved;
}

/* Messages refused for good, parked as the checkpoint passes them. */
static EsPlan mirror_park_plan = {
	"INSERT INTO @extschema@.es_kafka_mirror_dead_letters"
	" (position, event_id, aggregate_type, aggregate_id, topic, error)"
	" SELECT e.position, e.event_id, e.aggregate_type, e.aggregate_id, p.topic, p.error"
	"   FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3))"
	"        AS p(position, topic, error)"
	"   JOIN @extschema@.es_events e ON e.position OPERATOR(pg_catalog.=) p.position"
	"     ON CONFLICT (position) DO UPDATE SET topic = excluded.topic, error = excluded.error,"
	"        parked_at = excluded.parked_at",
	3, {INT8ARRAYOID, TEXTARRAYOID, TEXTARRAYOID}
};

/* The number of messages at the head of inflight all acknowledged (or parked). */
static int
acknowledged_prefix(void)
{
	int			done = 0;

	if (in_transaction)
		return 0;				/* a Kafka transaction counts once committed */
	while (done < ninflight && (inflight[done].state == MSG_DELIVERED || inflight[done].state == MSG_PARKED))
		done++;
	return done;
}

/* Record the parked messages of the first done in flight, in the checkpoint's transaction. */
static void
mirror_record_parked(int done)
{
	Datum	   *positions = palloc(sizeof(Datum) * done);
	Datum	   *topics = palloc(sizeof(Datum) * done);
	Datum	   *errors = palloc(sizeof(Datum) * done);
	Datum		args[3];
	int			n = 0;
	int			i;

	for (i = 0; i < done; i++)
	{
		const char *refusal = inflight[i].refusal;
		const char *newline;

		if (inflight[i].state != MSG_PARKED)
			continue;
		if (refusal == NULL)
			refusal = "?\nout of memory while recording the refusal";
		newline = strchr(refusal, '\n');
		positions[n] = Int64GetDatum(inflight[i].position);
		topics[n] = PointerGetDatum(cstring_to_text_with_len(refusal, newline - refusal));
		errors[n] = CStringGetTextDatum(newline + 1);
		n++;
	}
	if (n == 0)
		return;
	args[0] = PointerGetDatum(construct_array(positions, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[1] = PointerGetDatum(construct_array(topics, n, TEXTOID, -1, false, TYPALIGN_INT));
	args[2] = PointerGetDatum(construct_array(errors, n, TEXTOID, -1, false, TYPALIGN_INT));
	if (SPI_execute_plan(es_plan(&mirror_park_plan), args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not record the events the Kafka mirror parked");
	ereport(LOG,
			(errmsg("ultracore_es kafka: %d event%s refused for good by Kafka, parked in es_kafka_mirror_dead_letters",
					n, n == 1 ? "" : "s"),
			 errdetail("The first: position " INT64_FORMAT ", topic %s: %s.", DatumGetInt64(positions[0]),
					   TextDatumGetCString(topics[0]), TextDatumGetCString(errors[0]))));
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
		if (SPI_execute_plan(es_plan(&mirror_start_plan), &name, NULL, false, 0) != SPI_OK_INSERT ||
			SPI_execute_plan(es_plan(&mirror_load_plan), &name, NULL, false, 1) != SPI_OK_SELECT ||
			SPI_processed != 1)
			elog(ERROR, "could not read the checkpoint of the Kafka mirror");
		es_commit_point_from_row(&saved, SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, 3);
		mirror_point_keep();
		produced_known = true;
	}
	if (done > 0)
	{
		const InFlight *last = &inflight[done - 1];
		EsLogState	st;

		es_commit_point_passed(&saved, last->tx, last->position, last->seq);
		/* Below the horizon only the skip set may go, which needs no state of the log. */
		memset(&st, 0, sizeof(st));
		if (saved.in_log)
			es_commit_log_state(&st, true);
		es_commit_point_advance(&saved, &st);
		mirror_record_parked(done);
		mirror_save(done);
		/* What it passed is passed for the reading too: the checkpoint and skip set only rise. */
		if (produced.in_log)
		{
			produced.tx = saved.tx;
			produced.position = saved.position;
		}
		produced.skip = saved.skip;
		produced.nskip = saved.nskip;
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
	if (nrefused > 0)
		refused_forget(inflight[done - 1].position);
	inflight_drop(done);
	/* The stream moves again: the next failure backs off from the start. */
	backoff_ms = 0;
}

/*
 * The mirror's produce step, in a transaction of the worker: more events
 * read in commit order from the point produced so far, up to the batch
 * size in flight; a Kafka transaction per batch.
 */
static void
mirror_produce_step(EsStore *s, void *arg)
{
	MirrorRead	r = {es_kafka_batch_size - ninflight, 0, NULL, NULL};
	EsCommitRead read;
	EsLogState	st;

	if (message_cxt == NULL)
		message_cxt = AllocSetContextCreate(TopMemoryContext, "ultracore_es mirror message",
											ALLOCSET_DEFAULT_SIZES);
	/*
	 * The log or the horizon, as the log's state says.  The mirror switches
	 * with nothing in flight (its messages carry one mode's places), and
	 * then, idle in the log, follows the sequencer's completeness.
	 */
	es_commit_log_state(&st, saved.in_log);
	if (ninflight == 0)
	{
		EsCommitPoint before = saved;

		es_commit_point_follow(&saved, &st, MIRROR_CONSUMER, 0, 1);
		es_commit_point_advance(&saved, &st);
		if (saved.in_log != before.in_log || !FullTransactionIdEquals(saved.tx, before.tx) ||
			saved.nskip != before.nskip)
		{
			mirror_save(0);
			mirror_point_keep();
		}
	}
	else if (saved.in_log != st.live)
		return;
	routes_load();
	memset(&read, 0, sizeof(read));
	es_commit_point_read(&produced, &read);
	r.commit_read = &read;
	if (produced.in_log)
		PushActiveSnapshot(GetTransactionSnapshot());
	else
		read.horizon = es_commit_horizon_push();

	/*
	 * Every commit the read can see is before this point of the WAL.  Taken
	 * before reading, and whether or not standbys are waited for: the
	 * events of a read that an error stops halfway stay in flight, and
	 * standbys named while events wait on a full queue hold those too.
	 */
	held_lsn = GetXLogInsertRecPtr();
	held_since = GetCurrentTimestamp();
	read.max_count = r.wanted;
	es_read_commit_order(&read, false, mirror_event, &r);
	PopActiveSnapshot();
	routes = NULL;
}

/*
 * Hand the messages read and not sent yet to librdkafka, in order: at
 * once, or with standby slots named, once those standbys have flushed the
 * WAL past held_lsn.  A full queue stops it (back-pressure: the rest next
 * pass); a message Kafka refuses for good at once is parked.
 */
static void
mirror_send(void)
{
	char		waiting_for[256];
	TimestampTz now;

	if (nsent == ninflight)
		return;
	if (es_kafka_standby_wait_on() && !es_kafka_standbys_have(held_lsn, waiting_for, sizeof(waiting_for)))
	{
		/* The lag grows meanwhile; after a while the reason shows in es_kafka_status too. */
		if (TimestampDifferenceExceeds(held_since, GetCurrentTimestamp(), TOPIC_STALL_MS))
		{
			held_since = GetCurrentTimestamp();
			ereport(LOG, (errmsg("ultracore_es kafka: the mirror waits for its standbys: %s", waiting_for)));
			es_consumer_record_failure(MIRROR_CONSUMER, psprintf("waiting for the standbys: %s", waiting_for));
		}
		return;
	}
	now = GetCurrentTimestamp();
	for (; nsent < ninflight; nsent++)
	{
		InFlight   *m = &inflight[nsent];
		rd_kafka_resp_err_t err;

		if (m->value == NULL)
			continue;
		/* Transactional: the batch is one Kafka transaction, begun with its first message. */
		if (es_kafka_transactional && !in_transaction)
		{
			rd_kafka_error_t *error = rd_kafka_begin_transaction(producer);

			if (error != NULL)
			{
				snprintf(failure, sizeof(failure), "begin_transaction: %s", rd_kafka_error_string(error));
				rd_kafka_error_destroy(error);
				any_failed = true;
				return;
			}
			in_transaction = true;
		}
		if (m->topic->handle == NULL &&
			(m->topic->handle = rd_kafka_topic_new(producer, m->topic->topic, NULL)) == NULL)
		{
			snprintf(failure, sizeof(failure), "could not make a handle of topic %s: %s", m->topic->topic,
					 rd_kafka_err2str(rd_kafka_last_error()));
			any_failed = true;
			return;
		}
		err = rd_kafka_producev(producer,
								RD_KAFKA_V_RKT(m->topic->handle),
								RD_KAFKA_V_KEY(m->key, strlen(m->key)),
								RD_KAFKA_V_VALUE(m->value, m->value_len),
								RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE),
								RD_KAFKA_V_HEADERS(m->headers),
								RD_KAFKA_V_OPAQUE((void *) (uintptr_t) (base_seq + nsent)),
								RD_KAFKA_V_END);
		if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL)
			return;
		if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
			m->value = NULL;	/* librdkafka's now, as the headers */
		else
			rd_kafka_headers_destroy(m->headers);
		m->headers = NULL;
		unsent_free(m);
		m->produced_at = now;
		if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
			continue;
		if (!refused_for_good(err))
		{
			snprintf(failure, sizeof(failure), "could not produce to topic %s: %s", m->topic->topic,
					 rd_kafka_err2str(err));
			any_failed = true;
			return;
		}
		mirror_park(m, refusal_of(m->topic->topic, err));
		m->acked_at = now;
	}
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

	/*
	 * Not before the whole batch is in librdkafka's hands: once a commit
	 * has begun, the producer refuses the rest of the batch (a full queue
	 * kept it back), and the mirror would rewind to it for ever.
	 */
	if (!in_transaction || nsent < ninflight)
		return;
	error = rd_kafka_commit_transaction(producer, 50);
	if (error == NULL)
	{
		/* What was sent; a message parked before it was sent stays parked. */
		for (i = 0; i < nsent; i++)
			if (inflight[i].state == MSG_PENDING)
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
	char		drained[64];
	bool		fenced;

	/*
	 * Emptied first, whatever this pass does: what arrives after the next
	 * poll writes again, and a pass that does not poll does not leave the
	 * worker woken at once by a byte it already had.
	 */
	if (wake_pipe[0] >= 0)
		while (read(wake_pipe[0], drained, sizeof(drained)) > 0)
			;
	if (backoff_until != 0 && GetCurrentTimestamp() < backoff_until)
		return false;
	if (!es_kafka_fence_open(true, MIRROR_CONSUMER, &fenced))
	{
		if (fenced)
			mirror_rewind();
		return false;
	}
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
	producer_poll();
	if (!transactions_ready)
		producer_init_transactions();
	mirror_commit_transaction();
	mirror_check_stall();
	if (rd_kafka_fatal_error(producer, fatal, sizeof(fatal)) != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		snprintf(failure, sizeof(failure), "fatal producer error: %s", fatal);
		any_failed = true;
	}
	if (any_failed)
	{
		backoff_ms = backoff_ms == 0 ? BACKOFF_FIRST_MS : Min(backoff_ms * 2, BACKOFF_MAX_MS);
		backoff_until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), backoff_ms);
		ereport(LOG,
				(errmsg("ultracore_es kafka: %s; producing again from the mirror's checkpoint in %d ms",
						failure, backoff_ms)));
		mirror_rewind();
		es_consumer_record_failure(MIRROR_CONSUMER, failure);
		return false;
	}
	/* librdkafka goes on readying the producer meanwhile: the next pass finds it done. */
	if (!transactions_ready)
		return false;
	/*
	 * Two transactions: a checkpoint is saved even when producing fails
	 * (an event the brokers refuse stops the mirror there, every pass).
	 */
	checkpointed = 0;
	if ((!produced_known || acknowledged_prefix() > 0) &&
		es_kafka_run(MIRROR_CONSUMER, mirror_checkpoint_step) && checkpointed > 0)
		mirror_forget(checkpointed);
	mirror_send();
	if (produced_known && nsent == ninflight && ninflight < es_kafka_batch_size && !in_transaction &&
		!any_failed && es_kafka_run(MIRROR_CONSUMER, mirror_produce_step))
		mirror_send();
	producer_poll();
	return ninflight > 0;
}

/*
 * Destroy the producer and forget what was in flight (produced again
 * later), and what was refused: the new settings may let it through.
 */
static void
mirror_stop(void)
{
	mirror_rewind();
	es_kafka_fence_stop();
	refused_forget(PG_INT64_MAX);
	if (topics != NULL)
		hash_destroy(topics);
	topics = NULL;
	producer_failed_at = 0;
	backoff_until = 0;
	backoff_ms = 0;
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
 * While messages are in flight the worker comes back within KAFKA_BUSY_MS,
 * doubling up to KAFKA_STALLED_MS while no pass moves them (the brokers
 * away, the standbys behind): through an outage it made 154 passes a
 * second for nothing, 16 now.  Acknowledgements and appends wake it anyway.
 */
#define KAFKA_STALLED_MS	50

static long
mirror_busy_nap(void)
{
	static long nap = KAFKA_BUSY_MS;
	static uint64 last_base_seq = 0;
	static int	last_ninflight = -1;
	static int	last_nsent = -1;
	bool		moved = base_seq != last_base_seq || ninflight != last_ninflight || nsent != last_nsent;

	last_base_seq = base_seq;
	last_ninflight = ninflight;
	last_nsent = nsent;
	nap = moved ? KAFKA_BUSY_MS : Min(nap * 2, KAFKA_STALLED_MS);
	return nap;
}

/*
 * The service's pass, when brokers are configured: come back within a few
 * milliseconds while messages are in flight (mirror_busy_nap).  Commits
 * that append wake the worker for the mirror.
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
	return busy ? mirror_busy_nap() : es_kafka_idle_nap();
}

/* One mirror, in the database Kafka serves, when brokers are configured. */
static int
mirror_wanted(bool kafka_database)
{
	return kafka_database && es_kafka_brokers != NULL && es_kafka_brokers[0] != '\0' ? 1 : 0;
}

/* The worker sleeps on it too: see producer_create. */
static int
mirror_wait_fd(void)
{
	return producer != NULL ? wake_pipe[0] : -1;
}

static const EsWorkerService mirror_service = {
	.name = "kafka mirror",
	.wanted = mirror_wanted,
	.pass = mirror_service_pass,
	.wait_fd = mirror_wait_fd,
	.stop = mirror_stop,
};

/*-------------------------------------------------------------------------
 * At append: an event the store accepts is one the mirror can send
 *-------------------------------------------------------------------------
 */

/* What a message takes besides the event's data and metadata: key, ce_* headers, framing. */
#define MESSAGE_HEADROOM	4096

/*
 * The largest message the mirror's producer sends: message.max.bytes as
 * librdkafka reads ultracore_es.kafka_producer_properties (its default
 * when they do not set it), read again when they change.
 */
static int
mirror_max_message_bytes(void)
{
	static char *read_from = NULL;
	static int	max_bytes = 1000000;
	const char *properties = es_kafka_producer_properties ? es_kafka_producer_properties : "";

	if (read_from == NULL || strcmp(read_from, properties) != 0)
	{
		char		errstr[512];
		char		value[32];
		size_t		len = sizeof(value);
		rd_kafka_conf_t *conf = es_kafka_client_conf(properties, errstr, sizeof(errstr));

		/* Properties librdkafka refuses: the mirror does not run, its default stands. */
		max_bytes = 1000000;
		if (conf != NULL)
		{
			if (rd_kafka_conf_get(conf, "message.max.bytes", value, &len) == RD_KAFKA_CONF_OK)
				max_bytes = atoi(value);
			rd_kafka_conf_destroy(conf);
		}
		if (read_from != NULL)
			pfree(read_from);
		read_from = MemoryContextStrdup(TopMemoryContext, properties);
	}
	return max_bytes;
}

/* Whether the mirror serves this database's store (Kafka configured, and this is its database). */
static bool
mirror_serves_here(void)
{
	static char *database = NULL;

	if (es_kafka_brokers == NULL || es_kafka_brokers[0] == '\0')
		return false;
	if (database == NULL)
		database = MemoryContextStrdup(TopMemoryContext, get_database_name(MyDatabaseId));
	return strcmp(database, es_kafka_database_name()) == 0;
}

/*
 * es_event_size_check_hook: refuse an event whose message the mirror's
 * producer would refuse (message.max.bytes), while the mirror serves this
 * store.  The value is the data as JSON text and the metadata a header: a
 * text at most six times its jsonb (a control character printed as
 * \u0001), so that most events are let through without printing them.
 * One that passes here can still be refused by brokers whose limit is
 * lower; the mirror parks it then.
 */
static void
mirror_check_event_size(Jsonb *data, Jsonb *metadata, const char *event_id)
{
	int			max_bytes;
	int64		room;
	Size		stored = VARSIZE(data) + (metadata ? VARSIZE(metadata) : 0);
	Size		text;

	if (!mirror_serves_here())
		return;
	max_bytes = mirror_max_message_bytes();
	room = (int64) max_bytes - MESSAGE_HEADROOM;
	if ((int64) stored * 6 <= room)
		return;
	text = strlen(JsonbToCString(NULL, &data->root, VARSIZE(data))) +
		(metadata ? strlen(JsonbToCString(NULL, &metadata->root, VARSIZE(metadata))) : 0);
	if ((int64) text > room)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("event is too large for the Kafka mirror"),
				 event_id ?
				 errdetail("Event \"%s\" takes %zu bytes of data and metadata as JSON; the mirror's producer sends messages of at most %d bytes (message.max.bytes), %d of them kept for the key and the headers.",
						   event_id, text, max_bytes, MESSAGE_HEADROOM) :
				 errdetail("The event takes %zu bytes of data and metadata as JSON; the mirror's producer sends messages of at most %d bytes (message.max.bytes), %d of them kept for the key and the headers.",
						   text, max_bytes, MESSAGE_HEADROOM),
				 errhint("Keep large payloads outside the event store and put a reference in the event, or raise message.max.bytes in ultracore_es.kafka_producer_properties (and the brokers' and topics' limits).")));
}

/* es_kafka_mirror_init: from _PG_init. */
void
es_kafka_mirror_init(void)
{
	es_worker_add_service(&mirror_service);
	es_event_size_check_hook = mirror_check_event_size;
}
