/*-------------------------------------------------------------------------
 *
 * kafka.h
 *	  The Kafka layer: what its files share.  The clients' configuration,
 *	  creation, logs and settings (client.c), the mirror (mirror.c) and the
 *	  ingest (ingest.c, its messages decoded in ingest_message.c), each a
 *	  service of the background workers; across a failover, the fence
 *	  (fence.c) and the standbys the mirror waits for (standby.c).  Only
 *	  the files of src/kafka include librdkafka.
 *
 * Rules (DESIGN.md, "Rules for code that talks to Kafka"):
 *
 *	- Clients are created in the workers, after they started, never in
 *	  _PG_init; every client is destroyed on every way out (the services'
 *	  stop, also from the worker's exit callback), without waiting on
 *	  brokers.
 *	- Nothing runs PostgreSQL code on librdkafka's threads: logs go to the
 *	  client's queue (log.queue) and are emitted after a poll returns; the
 *	  delivery-report, error and rebalance callbacks, which the polls run on
 *	  the worker's own thread, only record what happened.
 *	- No worker blocks in librdkafka: polls have no timeout, and the workers
 *	  sleep on their latch and on a pipe their client's queue writes to (the
 *	  mirror's producer's main queue, an ingest worker's consumer queue), so
 *	  SIGTERM stops them at once even while brokers are gone.  The bounded
 *	  exceptions: a topic's metadata (2 s) and a fence claim (5 s, once per
 *	  promotion).
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_KAFKA_H
#define ES_KAFKA_H

#include <librdkafka/rdkafka.h>

#include "access/xlogdefs.h"

#include "core/step.h"
#include "kafka/service.h"
#include "write/append.h"

/* The es_consumers rows of the mirror and of the ingest. */
#define MIRROR_CONSUMER		"kafka_mirror"
#define INGEST_CONSUMER		"kafka_ingest"

/* A client that cannot be created is tried again after this long. */
#define RETRY_CLIENT_MS		5000

/* client.c */
extern void es_kafka_client_error(const char *format,...) pg_attribute_printf(1, 2);
extern rd_kafka_conf_t *es_kafka_client_conf(const char *properties, char *errstr, size_t errlen);
extern rd_kafka_t *es_kafka_client_new(rd_kafka_type_t type, rd_kafka_conf_t *conf, char *errstr,
									   size_t errlen, const char *hint);
extern void es_kafka_emit_logs(void);
extern bool es_kafka_configured(char **made_with, const char *settings, void (*stop) (void));
extern bool es_kafka_run(const char *consumer_name, EsStep step);
extern const char *es_kafka_own_source(void);

/* fence.c: whether this server may speak for the store on Kafka */
extern bool es_kafka_fence_open(bool claim, const char *consumer, bool *fenced);
extern void es_kafka_fence_stop(void);
extern long es_kafka_idle_nap(void);

/* standby.c */
extern bool es_kafka_standby_wait_on(void);
extern bool es_kafka_standbys_have(XLogRecPtr lsn, char *waiting_for, size_t len);

/* mirror.c */
extern void es_kafka_mirror_init(void);

/* mirror_message.c */
extern rd_kafka_headers_t *es_kafka_mirror_headers(Datum *values, bool *nulls, const char *aggregate_type);
extern char *es_kafka_event_origin(Jsonb *metadata, const char *key);

/* ingest.c */
extern void es_kafka_ingest_init(void);

/* ingest_message.c */
extern bool es_kafka_ingest_parse(rd_kafka_message_t *msg, EsAppendRequest *req, EsEventIn *ev);
extern void es_kafka_ingest_dead_letter(rd_kafka_message_t *msg, const char *error);

#endif							/* ES_KAFKA_H */
