/*-------------------------------------------------------------------------
 *
 * guc.h
 *	  The ultracore_es.* settings (guc.c), read by every layer.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_GUC_H
#define ES_GUC_H

/* The store */
extern int	es_max_event_bytes;
extern int	es_partition_events;
extern int	es_partitions_ahead;
extern char *es_archive_tablespace;

/* The background workers */
extern char *es_worker_database;
extern int	es_delivery_workers;
extern int	es_delivery_nice;
extern bool es_worker_enabled;
extern bool es_commit_log;
extern int	es_worker_poll_interval;
extern int	es_worker_batch_size;
extern int	es_handled_retention;

/* Kafka */
extern char *es_kafka_database;
extern char *es_kafka_brokers;
extern char *es_kafka_topic_prefix;
extern char *es_kafka_producer_properties;
extern char *es_kafka_consumer_properties;
extern char *es_kafka_ingest_topics;
extern char *es_kafka_group_id;
extern char *es_kafka_partitioner;
extern char *es_kafka_source;
extern bool es_kafka_transactional;
extern char *es_kafka_standby_slots;
extern char *es_kafka_fence_topic;
extern int	es_kafka_batch_size;
extern int	es_kafka_ingest_batch_size;
extern int	es_kafka_ingest_workers;

/* es_health */
extern int	es_health_lag_seconds;
extern int	es_health_lag_events;
extern int	es_health_batch_seconds;
extern int	es_health_horizon_seconds;
extern int	es_health_dead_letters;

/* trace context */
extern char *es_traceparent;
extern char *es_tracestate;

/* ultracore_es.kafka_personal_data */
typedef enum EsKafkaPersonalData
{
	ES_KAFKA_PERSONAL_ENCRYPTED,
	ES_KAFKA_PERSONAL_OMIT,
	ES_KAFKA_PERSONAL_PLAIN
} EsKafkaPersonalData;

extern char *es_master_key_file;
extern char *es_previous_master_key_file;
extern int	es_kafka_personal_data;

extern void es_guc_init(void);

#endif							/* ES_GUC_H */
