/*-------------------------------------------------------------------------
 *
 * fence.c
 *	  Which server may speak for the store on Kafka.  A promoted standby
 *	  keeps the system identifier, the store's events and the mirror's
 *	  checkpoint, so it takes the mirror and the ingest over where the old
 *	  primary left them.  The old primary, if it comes back as a primary
 *	  (or never learnt it was replaced), must then neither mirror, or Kafka
 *	  would get a second "version 7" of an account, nor ingest, or its
 *	  consumers would hold partitions of the group away from the new one.
 *
 * The server's timeline tells them apart: a promotion starts a new one.
 * ultracore_es.kafka_fence_topic holds claims, one per store source
 * (ce_source) as key: {"timeline": N, ...}.  A mirror whose timeline is
 * above every claim of its source claims it before producing; a mirror or
 * an ingest that sees a claim above its own timeline is fenced: it stops,
 * and stays stopped.  Each process reads the whole topic once (it is
 * small: compacted, one key per store) and then keeps watching it, so a
 * claim made while the old primary runs stops it within a pass.  Timeline
 * 1 never claims: a store that has never failed over writes nothing there,
 * and a missing topic fences no one.  A transactional mirror is also
 * fenced by Kafka itself: the new primary's producer has the same
 * transactional.id, and its init_transactions aborts the old one's.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "kafka/kafka.h"

#include "access/xlog.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "core/guc.h"
#include "delivery/consumer.h"

/* How long a claim may take to be acknowledged; how often a missing topic is looked for again. */
#define CLAIM_TIMEOUT_MS	5000
#define TOPIC_RECHECK_MS	10000
#define METADATA_MS			2000
/* While the claims are read at start: the services' nap, for at most how long. */
#define FENCE_READ_NAP_MS	10
#define READ_SOON_MS		5000

typedef enum EsFence
{
	ES_FENCE_UNKNOWN,			/* the claims are not read yet: wait */
	ES_FENCE_OPEN,
	ES_FENCE_CLOSED				/* a server on a later timeline took the store over */
} EsFence;

static rd_kafka_t *watcher = NULL;
static char watched_topic[256];
static int	npartitions = -1;		/* -1: not known yet; 0: the topic does not exist */
static bool *at_end = NULL;			/* per partition: read up to its end once */
static bool caught_up = false;		/* every partition read up to its end once */
static TimestampTz looked_at = 0;
static TimestampTz assigned_at = 0;	/* when the partitions were assigned */
static TimeLineID latest_claim = 0; /* the highest timeline claiming our source */
static char latest_claim_value[512];

static EsFence last_state = ES_FENCE_OPEN;
static TimestampTz noted_at = 0;

static void
watcher_destroy(void)
{
	if (watcher != NULL)
		rd_kafka_destroy_flags(watcher, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
	watcher = NULL;
	if (at_end != NULL)
		pfree(at_end);
	at_end = NULL;
	npartitions = -1;
	caught_up = false;
	looked_at = 0;
	latest_claim = 0;
	latest_claim_value[0] = '\0';
}

/* es_kafka_fence_stop: let the watcher go (a service stops, or the settings changed). */
void
es_kafka_fence_stop(void)
{
	watcher_destroy();
}

static bool
watcher_create(void)
{
	char		errstr[512];
	rd_kafka_conf_t *conf = es_kafka_client_conf(es_kafka_consumer_properties, errstr, sizeof(errstr));

	/*
	 * Partitions are assigned, not subscribed: the group is never joined,
	 * nothing is committed.  A fetch of a partition read to its end waits
	 * 100 ms for more, not librdkafka's 500: the end of each is what the
	 * services wait for when they start (es_kafka_idle_nap), and
	 * claims are a few records a year.
	 */
	if (conf != NULL &&
		(rd_kafka_conf_set(conf, "group.id", "ultracore_es.fence", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
		 rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
		 rd_kafka_conf_set(conf, "enable.partition.eof", "true", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
		 rd_kafka_conf_set(conf, "fetch.wait.max.ms", "100", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK))
	{
		rd_kafka_conf_destroy(conf);
		conf = NULL;
	}
	watcher = es_kafka_client_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr),
								  "ultracore_es.kafka_consumer_properties");
	if (watcher == NULL)
		return false;
	rd_kafka_poll_set_consumer(watcher);
	if (rd_kafka_set_log_queue(watcher, NULL) != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		watcher_destroy();
		return false;
	}
	strlcpy(watched_topic, es_kafka_fence_topic, sizeof(watched_topic));
	return true;
}

/*
 * Look the topic up and read every partition from its beginning; false
 * while it cannot be known (brokers away).  A topic that does not exist
 * holds no claim; it is looked for again now and then.
 */
static bool
watcher_assign(void)
{
	rd_kafka_topic_t *rkt;
	const struct rd_kafka_metadata *md;
	rd_kafka_resp_err_t err;
	rd_kafka_topic_partition_list_t *list;
	int			i;

	if (npartitions > 0 ||
		(npartitions == 0 && !TimestampDifferenceExceeds(looked_at, GetCurrentTimestamp(), TOPIC_RECHECK_MS)))
		return true;
	looked_at = GetCurrentTimestamp();
	rkt = rd_kafka_topic_new(watcher, watched_topic, NULL);
	if (rkt == NULL)
		return false;
	err = rd_kafka_metadata(watcher, 0, rkt, &md, METADATA_MS);
	rd_kafka_topic_destroy(rkt);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		es_kafka_client_error("fence topic %s: %s", watched_topic, rd_kafka_err2str(err));
		return false;
	}
	if (md->topic_cnt != 1 || md->topics[0].err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
		md->topics[0].partition_cnt == 0)
	{
		rd_kafka_metadata_destroy(md);
		npartitions = 0;
		caught_up = true;
		return true;
	}
	if (md->topics[0].err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		es_kafka_client_error("fence topic %s: %s", watched_topic, rd_kafka_err2str(md->topics[0].err));
		rd_kafka_metadata_destroy(md);
		return false;
	}
	npartitions = md->topics[0].partition_cnt;
	rd_kafka_metadata_destroy(md);
	at_end = MemoryContextAllocZero(TopMemoryContext, sizeof(bool) * npartitions);
	caught_up = false;
	list = rd_kafka_topic_partition_list_new(npartitions);
	for (i = 0; i < npartitions; i++)
		rd_kafka_topic_partition_list_add(list, watched_topic, i)->offset = RD_KAFKA_OFFSET_BEGINNING;
	assigned_at = GetCurrentTimestamp();
	err = rd_kafka_assign(watcher, list);
	rd_kafka_topic_partition_list_destroy(list);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		es_kafka_client_error("fence topic %s: could not assign: %s", watched_topic, rd_kafka_err2str(err));
		watcher_destroy();
		return false;
	}
	return true;
}

/* The timeline a claim's value names; 0 when it names none. */
static TimeLineID
claim_timeline(const char *value, size_t len)
{
	char		text[512];
	const char *t;

	if (len >= sizeof(text))
		len = sizeof(text) - 1;
	memcpy(text, value, len);
	text[len] = '\0';
	t = strstr(text, "\"timeline\":");
	return t != NULL ? (TimeLineID) strtoul(t + strlen("\"timeline\":"), NULL, 10) : 0;
}

/* Read what came in, without waiting: claims of our source, and partitions' ends. */
static void
watcher_consume(void)
{
	const char *source = es_kafka_own_source();
	size_t		source_len = strlen(source);
	rd_kafka_message_t *msg;

	while ((msg = rd_kafka_consumer_poll(watcher, 0)) != NULL)
	{
		if (msg->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
		{
			if (msg->partition >= 0 && msg->partition < npartitions)
				at_end[msg->partition] = true;
		}
		else if (msg->err != RD_KAFKA_RESP_ERR_NO_ERROR)
			es_kafka_client_error("fence topic %s: %s", watched_topic, rd_kafka_message_errstr(msg));
		else if (msg->key_len == source_len && memcmp(msg->key, source, source_len) == 0 && msg->payload != NULL)
		{
			TimeLineID tli = claim_timeline(msg->payload, msg->len);

			if (tli > latest_claim)
			{
				latest_claim = tli;
				snprintf(latest_claim_value, sizeof(latest_claim_value), "%.*s",
						 (int) Min(msg->len, sizeof(latest_claim_value) - 1), (const char *) msg->payload);
			}
		}
		rd_kafka_message_destroy(msg);
	}
	if (!caught_up && npartitions > 0)
	{
		int			i;

		for (i = 0; i < npartitions && at_end[i]; i++)
			;
		caught_up = i == npartitions;
	}
}

static rd_kafka_resp_err_t claim_result;

static void
on_claim_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
	claim_result = msg->err;
}

/*
 * Claim our source for timeline tli: produce the claim, and wait (at most
 * CLAIM_TIMEOUT_MS, once per promotion) until all in-sync replicas have
 * it.  False, with why, when it could not be.
 */
static bool
fence_claim(TimeLineID tli, char *why, size_t len)
{
	char		errstr[512];
	rd_kafka_conf_t *conf = es_kafka_client_conf(es_kafka_producer_properties, errstr, sizeof(errstr));
	rd_kafka_t *producer;
	const char *source = es_kafka_own_source();
	char	   *value;
	rd_kafka_resp_err_t err;

	if (conf != NULL &&
		(rd_kafka_conf_set(conf, "acks", "all", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
		 rd_kafka_conf_set(conf, "enable.idempotence", "true", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
		 rd_kafka_conf_set(conf, "message.timeout.ms", "5000", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK))
	{
		rd_kafka_conf_destroy(conf);
		conf = NULL;
	}
	if (conf != NULL)
		rd_kafka_conf_set_dr_msg_cb(conf, on_claim_delivery);
	producer = es_kafka_client_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr),
								   "ultracore_es.kafka_producer_properties");
	if (producer == NULL)
	{
		snprintf(why, len, "could not create the producer of the claim");
		return false;
	}
	value = psprintf("{\"source\":\"%s\",\"timeline\":%u,\"system_identifier\":\"" UINT64_FORMAT "\","
					 "\"lsn\":\"%X/%X\",\"claimed_at\":\"%s\"}",
					 source, tli, GetSystemIdentifier(), LSN_FORMAT_ARGS(GetXLogInsertRecPtr()),
					 timestamptz_to_str(GetCurrentTimestamp()));
	claim_result = RD_KAFKA_RESP_ERR__IN_PROGRESS;
	err = rd_kafka_producev(producer,
							RD_KAFKA_V_TOPIC(es_kafka_fence_topic),
							RD_KAFKA_V_KEY(source, strlen(source)),
							RD_KAFKA_V_VALUE(value, strlen(value)),
							RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
							RD_KAFKA_V_END);
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		rd_kafka_flush(producer, CLAIM_TIMEOUT_MS);
		err = claim_result;
	}
	rd_kafka_destroy_flags(producer, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		snprintf(why, len, "could not claim source %s for timeline %u on topic %s: %s",
				 source, tli, es_kafka_fence_topic,
				 err == RD_KAFKA_RESP_ERR__IN_PROGRESS ? "not acknowledged in time" : rd_kafka_err2str(err));
		return false;
	}
	ereport(LOG,
			(errmsg("ultracore_es kafka: claimed source %s for timeline %u on topic %s",
					source, tli, es_kafka_fence_topic),
			 errdetail("A server of this store on an earlier timeline no longer mirrors or ingests.")));
	latest_claim = tli;
	strlcpy(latest_claim_value, value, sizeof(latest_claim_value));
	/* A topic the claim just made: read it from now on. */
	if (npartitions == 0)
		looked_at = 0;
	return true;
}

/*
 * Whether this server may speak for the store on Kafka: ES_FENCE_OPEN,
 * ES_FENCE_CLOSED (a server on a later timeline claimed it), or
 * ES_FENCE_UNKNOWN while the claims are still being read; why says what
 * holds it.  claim: the mirror's call, which claims the source when this
 * server's timeline is the newest.  No fence topic: always open.
 */
static EsFence
fence_state(bool claim, char *why, size_t len)
{
	TimeLineID	ours;

	if (es_kafka_fence_topic == NULL || es_kafka_fence_topic[0] == '\0')
		return ES_FENCE_OPEN;
	if (watcher != NULL && strcmp(watched_topic, es_kafka_fence_topic) != 0)
		watcher_destroy();
	if (npartitions < 0 && looked_at != 0 &&
		!TimestampDifferenceExceeds(looked_at, GetCurrentTimestamp(), RETRY_CLIENT_MS))
	{
		snprintf(why, len, "the claims on fence topic %s cannot be read", es_kafka_fence_topic);
		return ES_FENCE_UNKNOWN;
	}
	if ((watcher == NULL && !watcher_create()) || !watcher_assign())
	{
		snprintf(why, len, "the claims on fence topic %s cannot be read", es_kafka_fence_topic);
		return ES_FENCE_UNKNOWN;
	}
	watcher_consume();
	if (!caught_up)
	{
		snprintf(why, len, "reading the claims on fence topic %s", watched_topic);
		return ES_FENCE_UNKNOWN;
	}
	ours = GetWALInsertionTimeLine();
	if (latest_claim > ours)
	{
		snprintf(why, len, "fenced: this server is on timeline %u and a server on timeline %u claimed source %s on topic %s: %s",
				 ours, latest_claim, es_kafka_own_source(), watched_topic, latest_claim_value);
		return ES_FENCE_CLOSED;
	}
	if (claim && ours > 1 && latest_claim < ours && !fence_claim(ours, why, len))
		return ES_FENCE_UNKNOWN;
	return ES_FENCE_OPEN;
}

/*
 * es_kafka_idle_nap: how long a Kafka service with nothing to do sleeps.
 * While the claims are being read up to their end, assigned less than
 * READ_SOON_MS ago, FENCE_READ_NAP_MS: a pass every
 * ultracore_es.worker_poll_interval kept a mirror just turned on waiting
 * a second (ten passes of the benchmark's 100 ms; the default is 1 s a
 * pass).  Longer, brokers are away, and the passes space out again.
 */
long
es_kafka_idle_nap(void)
{
	if (watcher != NULL && npartitions > 0 && !caught_up &&
		!TimestampDifferenceExceeds(assigned_at, GetCurrentTimestamp(), READ_SOON_MS))
		return FENCE_READ_NAP_MS;
	return es_worker_poll_interval;
}

/*
 * es_kafka_fence_open: whether the service of consumer may go on with
 * Kafka now (claim: the mirror's call).  When it is fenced (*fenced: its
 * client must go) that is logged once; the reason is recorded on the
 * consumer's row then, and every RETRY_CLIENT_MS while it is fenced or
 * waits for the claims, for es_kafka_status and es_health.
 */
bool
es_kafka_fence_open(bool claim, const char *consumer, bool *fenced)
{
	char		why[1024];
	EsFence		state = fence_state(claim, why, sizeof(why));
	EsFence		before = last_state;

	*fenced = state == ES_FENCE_CLOSED;
	if (state == ES_FENCE_OPEN)
	{
		last_state = state;
		noted_at = 0;
		return true;
	}
	if (state != before)
	{
		last_state = state;
		noted_at = GetCurrentTimestamp();
		if (state == ES_FENCE_CLOSED)
		{
			ereport(WARNING,
					(errmsg("ultracore_es kafka: the %s stops: %s", consumer, why),
					 errhint("This server was replaced by a promoted standby. Rebuild it as a standby of the new primary (pg_rewind), or, if the claim is wrong, see the failover runbook in the README.")));
			es_consumer_record_failure(consumer, why);
		}
		return false;
	}
	if (TimestampDifferenceExceeds(noted_at, GetCurrentTimestamp(), RETRY_CLIENT_MS))
	{
		noted_at = GetCurrentTimestamp();
		es_consumer_record_failure(consumer, why);
	}
	return false;
}
