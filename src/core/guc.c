/*-------------------------------------------------------------------------
 *
 * guc.c
 *	  The ultracore_es.* settings.
 *
 * Contexts are chosen on purpose: limits that protect the store are SUSET, so
 * that an application role cannot lift them for its own session; the
 * worker's database is POSTMASTER (the worker connects once), so it exists
 * only when the library is preloaded; what the worker loop reads each pass
 * is SIGHUP.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "core/guc.h"

#include <ctype.h>
#include <limits.h>

#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/varlena.h"

#include "core/event.h"
#include "core/validate.h"

int			es_max_event_bytes = 1024 * 1024;
int			es_partition_events = 10000000;
int			es_partitions_ahead = 2;
char	   *es_archive_tablespace = NULL;
char	   *es_worker_database = NULL;
int			es_delivery_workers = 2;
int			es_delivery_nice = 10;
char	   *es_kafka_database = NULL;
int			es_health_lag_seconds = 60;
int			es_health_lag_events = 10000;
int			es_health_batch_seconds = 60;
int			es_health_horizon_seconds = 60;
int			es_health_dead_letters = 100;
bool		es_worker_enabled = true;
bool		es_commit_log = true;
int			es_worker_poll_interval = 1000;
int			es_worker_batch_size = 1000;
int			es_handled_retention = 7 * 24 * 3600;
char	   *es_kafka_brokers = NULL;
char	   *es_kafka_topic_prefix = NULL;
char	   *es_kafka_producer_properties = NULL;
char	   *es_kafka_consumer_properties = NULL;
char	   *es_kafka_ingest_topics = NULL;
char	   *es_kafka_group_id = NULL;
char	   *es_kafka_partitioner = NULL;
char	   *es_kafka_source = NULL;
bool		es_kafka_transactional = false;
char	   *es_kafka_standby_slots = NULL;
char	   *es_kafka_fence_topic = NULL;
int			es_kafka_batch_size = 50000;
int			es_kafka_ingest_batch_size = 1000;
int			es_kafka_ingest_workers = 1;
char	   *es_traceparent = NULL;
char	   *es_tracestate = NULL;
char	   *es_master_key_file = NULL;
char	   *es_previous_master_key_file = NULL;
int			es_kafka_personal_data = ES_KAFKA_PERSONAL_ENCRYPTED;

static const struct config_enum_entry kafka_personal_data_options[] = {
	{"encrypted", ES_KAFKA_PERSONAL_ENCRYPTED, false},
	{"omit", ES_KAFKA_PERSONAL_OMIT, false},
	{"plain", ES_KAFKA_PERSONAL_PLAIN, false},
	{NULL, 0, false}
};

/* ultracore_es.tracestate: a W3C tracestate, or empty. */
static bool
check_tracestate(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || es_tracestate_valid(*newval))
		return true;
	GUC_check_errdetail("A tracestate is at most 512 printable ASCII characters.");
	return false;
}

/* ultracore_es.traceparent: a W3C traceparent, or empty. */
static bool
check_traceparent(char **newval, void **extra, GucSource source)
{
	const char *why;

	if (*newval == NULL || (*newval)[0] == '\0' || es_traceparent_valid(*newval, &why))
		return true;
	GUC_check_errdetail("%s", why);
	return false;
}

/* librdkafka's partitioners; murmur2_random is the Java client's. */
static bool
check_kafka_partitioner(char **newval, void **extra, GucSource source)
{
	static const char *const known[] = {
		"consistent_random", "murmur2_random", "consistent", "murmur2", "fnv1a", "fnv1a_random", "random"
	};
	int			i;

	for (i = 0; i < (int) lengthof(known); i++)
		if (strcmp(*newval, known[i]) == 0)
			return true;
	GUC_check_errdetail("Known partitioners: consistent_random, murmur2_random, consistent, murmur2, fnv1a, fnv1a_random, random.");
	return false;
}

/* A list of replication slot names (standby.c reads it the same way). */
static bool
check_kafka_standby_slots(char **newval, void **extra, GucSource source)
{
	char	   *names = pstrdup(*newval);
	List	   *slots;
	bool		ok = SplitIdentifierString(names, ',', &slots);

	list_free(slots);
	pfree(names);
	if (!ok)
		GUC_check_errdetail("The setting is a comma-separated list of physical replication slot names.");
	return ok;
}

/*
 * Kafka's names: a topic's (at most 249 characters of [a-zA-Z0-9._-]; a
 * prefix leaves room for the longest aggregate type, 128; empty is allowed,
 * a fence topic's saying "no fence"), a consumer group's (not empty).
 * Checked here, rather than by the brokers' refusals at every pass.
 */
static bool
kafka_name_ok(const char *name, int max_len, const char *what)
{
	const char *p;

	if ((int) strlen(name) > max_len)
	{
		GUC_check_errdetail("A %s has at most %d characters.", what, max_len);
		return false;
	}
	for (p = name; *p; p++)
		if (!isalnum((unsigned char) *p) && *p != '.' && *p != '_' && *p != '-')
		{
			GUC_check_errdetail("A %s holds only ASCII letters, digits, \".\", \"_\" and \"-\".", what);
			return false;
		}
	return true;
}

static bool
check_kafka_topic_prefix(char **newval, void **extra, GucSource source)
{
	return kafka_name_ok(*newval, 249 - ES_MAX_NAME_LEN, "topic prefix");
}

static bool
check_kafka_fence_topic(char **newval, void **extra, GucSource source)
{
	return kafka_name_ok(*newval, 249, "topic name");
}

static bool
check_kafka_group_id(char **newval, void **extra, GucSource source)
{
	if ((*newval)[0] == '\0')
	{
		GUC_check_errdetail("A consumer group must not be empty.");
		return false;
	}
	return true;
}

void
es_guc_init(void)
{
	DefineCustomIntVariable("ultracore_es.max_event_bytes",
							"Largest event accepted, data and metadata together.",
							"Appends of larger events are refused with SQLSTATE 54000.",
							&es_max_event_bytes,
							1024 * 1024,
							1024,
							MaxAllocSize / 2,
							PGC_SUSET,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomIntVariable("ultracore_es.partition_events",
							"Positions in each partition of es_events the worker makes from now on.",
							"Partitions made before keep their bounds.",
							&es_partition_events,
							10000000,
							1000,
							INT_MAX,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("ultracore_es.partitions_ahead",
							"Partitions of es_events the worker keeps made beyond the one appends go to.",
							"Appends past them go to es_events_overflow, the DEFAULT partition.",
							&es_partitions_ahead,
							2,
							1,
							1000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomStringVariable("ultracore_es.archive_tablespace",
							   "Tablespace es_archive moves the old partitions of es_events into.",
							   "Empty: es_archive is refused.",
							   &es_archive_tablespace,
							   "",
							   PGC_SUSET,
							   0,
							   NULL, NULL, NULL);

	/*
	 * The W3C trace context of the session's appends, which instrumented
	 * clients SET LOCAL: recorded in the metadata of each event that does
	 * not carry its own, and sent on to Kafka.
	 */
	DefineCustomStringVariable("ultracore_es.traceparent",
							   "W3C traceparent recorded in the metadata of the events appended (unless an event's metadata has one).",
							   "Empty: none.  Instrumented clients SET LOCAL it per transaction.",
							   &es_traceparent,
							   "",
							   PGC_USERSET,
							   0,
							   check_traceparent, NULL, NULL);
	DefineCustomStringVariable("ultracore_es.tracestate",
							   "W3C tracestate recorded with ultracore_es.traceparent.",
							   NULL,
							   &es_tracestate,
							   "",
							   PGC_USERSET,
							   0,
							   check_tracestate, NULL, NULL);

	/*
	 * Personal data (src/privacy/keys.c): the master key stays outside the
	 * database, in a file that only the server's user reads; only
	 * superusers see or set where.
	 */
	DefineCustomStringVariable("ultracore_es.master_key_file",
							   "File holding the master key that wraps the keys of personal data (at least 32 random bytes, mode 0600).",
							   "Empty: personal data cannot be registered, stored or read.",
							   &es_master_key_file,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("ultracore_es.previous_master_key_file",
							   "During a master key rotation, the file of the previous master key (until es_rewrap_subject_keys() has run).",
							   NULL,
							   &es_previous_master_key_file,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	/*
	 * The workers' settings exist only when the library is preloaded: a
	 * POSTMASTER setting can only be defined then, and without preloading
	 * there are no workers.
	 */
	if (process_shared_preload_libraries_in_progress)
		DefineCustomStringVariable("ultracore_es.database",
								   "Databases the background workers serve (comma-separated names); empty: every database with the extension.",
								   "The launcher starts workers in each database served where the extension is installed.",
								   &es_worker_database,
								   "",
								   PGC_SIGHUP,
								   0,
								   NULL, NULL, NULL);
	if (process_shared_preload_libraries_in_progress)
		DefineCustomIntVariable("ultracore_es.delivery_workers",
								"Delivery workers per database, sharing its handlers and async projections.",
								"A consumer (or a segment of one) is served by one worker at a time; each worker takes one of max_worker_processes.",
								&es_delivery_workers,
								2,
								1,
								64,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);
	if (process_shared_preload_libraries_in_progress)
		DefineCustomIntVariable("ultracore_es.delivery_nice",
								"Niceness of the delivery workers' processes (0 to 19): they yield the CPU to client sessions and the Kafka workers.",
								"0 runs them at the priority of every other process.",
								&es_delivery_nice,
								10,
								0,
								19,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);
	if (process_shared_preload_libraries_in_progress)
		DefineCustomIntVariable("ultracore_es.kafka_ingest_workers",
								"Background workers that ingest the Kafka topics, as members of one consumer group.",
								"The partitions are shared among them; each needs one of max_worker_processes.  0: no ingest.",
								&es_kafka_ingest_workers,
								1,
								0,
								32,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);

	DefineCustomBoolVariable("ultracore_es.worker_enabled",
							 "Whether the background worker delivers events to consumers.",
							 NULL,
							 &es_worker_enabled,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("ultracore_es.commit_log",
							 "Whether the store keeps its commit log from logical decoding when wal_level is logical.",
							 "The sequencer numbers each committed transaction that appended, in commit order, "
							 "into es_commit_log (es_read_log), through a logical replication slot.",
							 &es_commit_log,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("ultracore_es.worker_poll_interval",
							"Longest the worker sleeps between passes when no commit wakes it.",
							"Commits that append wake the worker at once; this is the fallback.",
							&es_worker_poll_interval,
							1000,
							10,
							3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("ultracore_es.worker_batch_size",
							"Most events a consumer applies in one transaction.",
							NULL,
							&es_worker_batch_size,
							1000,
							1,
							100000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("ultracore_es.handled_retention",
							"How long the idempotency records of applied events are kept.",
							"0 keeps them forever.  Records older than this are deleted by the worker.",
							&es_handled_retention,
							7 * 24 * 3600,
							0,
							INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	/*
	 * Kafka (kafka.c).  Properties may hold credentials (sasl.password): only
	 * superusers see them.
	 */
	DefineCustomStringVariable("ultracore_es.kafka_brokers",
							   "Kafka bootstrap servers (host:port,...); empty switches Kafka off.",
							   NULL,
							   &es_kafka_brokers,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("ultracore_es.kafka_database",
							   "Database whose store the Kafka mirror and ingest serve.",
							   "Empty: the first database of ultracore_es.database, or postgres when that is empty.",
							   &es_kafka_database,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("ultracore_es.kafka_topic_prefix",
							   "Prefix of the topic an aggregate type is mirrored to, unless es_kafka_routes says otherwise.",
							   "The topic is the prefix followed by the aggregate type.",
							   &es_kafka_topic_prefix,
							   "es.",
							   PGC_SIGHUP,
							   0,
							   check_kafka_topic_prefix, NULL, NULL);

	DefineCustomStringVariable("ultracore_es.kafka_producer_properties",
							   "librdkafka properties of the mirror's producer, as key=value;key=value.",
							   NULL,
							   &es_kafka_producer_properties,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("ultracore_es.kafka_consumer_properties",
							   "librdkafka properties of the ingest's consumer, as key=value;key=value.",
							   NULL,
							   &es_kafka_consumer_properties,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("ultracore_es.kafka_ingest_topics",
							   "Topics whose messages are appended to the store (comma-separated); empty: none.",
							   NULL,
							   &es_kafka_ingest_topics,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("ultracore_es.kafka_group_id",
							   "Consumer group of the ingest.",
							   NULL,
							   &es_kafka_group_id,
							   "ultracore_es",
							   PGC_SIGHUP,
							   0,
							   check_kafka_group_id, NULL, NULL);

	DefineCustomStringVariable("ultracore_es.kafka_partitioner",
							   "librdkafka partitioner of the mirror: consistent_random, or murmur2_random to partition as Java clients do.",
							   NULL,
							   &es_kafka_partitioner,
							   "consistent_random",
							   PGC_SIGHUP,
							   0,
							   check_kafka_partitioner, NULL, NULL);

	DefineCustomStringVariable("ultracore_es.kafka_source",
							   "CloudEvents source (ce_source) of mirrored events.",
							   "Empty: /ultracore_es/<system identifier>/<database>.  The ingest skips messages of this source.",
							   &es_kafka_source,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomEnumVariable("ultracore_es.kafka_personal_data",
							 "What the mirror sends of personal fields: encrypted (as stored, the subject in a header), omit, or plain.",
							 NULL,
							 &es_kafka_personal_data,
							 ES_KAFKA_PERSONAL_ENCRYPTED,
							 kafka_personal_data_options,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("ultracore_es.kafka_transactional",
							 "Whether the mirror produces each batch in a Kafka transaction (for consumers that read committed only).",
							 NULL,
							 &es_kafka_transactional,
							 false,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("ultracore_es.kafka_standby_slots",
							   "Physical replication slots (comma-separated) whose standbys must have flushed an event's commit before the mirror sends it; empty: none.",
							   "With the standbys named here, a failover to one of them never leaves on Kafka an event the new primary lacks.",
							   &es_kafka_standby_slots,
							   "",
							   PGC_SIGHUP,
							   GUC_LIST_INPUT,
							   check_kafka_standby_slots, NULL, NULL);

	DefineCustomStringVariable("ultracore_es.kafka_fence_topic",
							   "Topic where each server that takes over a store's mirror claims it with its timeline; a server on an earlier timeline neither mirrors nor ingests.",
							   NULL,
							   &es_kafka_fence_topic,
							   "ultracore_es.fence",
							   PGC_SIGHUP,
							   0,
							   check_kafka_fence_topic, NULL, NULL);

	DefineCustomIntVariable("ultracore_es.kafka_batch_size",
							"Most messages the mirror has in flight.",
							NULL,
							&es_kafka_batch_size,
							50000,
							1,
							1000000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("ultracore_es.kafka_ingest_batch_size",
							"Most messages the ingest appends in one transaction.",
							NULL,
							&es_kafka_ingest_batch_size,
							1000,
							1,
							100000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	/*
	 * es_health(): the warning levels; ten times each is critical.  Any
	 * role may set them for itself: they change what its own calls report.
	 */
	DefineCustomIntVariable("ultracore_es.health_lag_seconds",
							"Age of a consumer's oldest undelivered event from which es_health warns (critical at ten times).",
							NULL,
							&es_health_lag_seconds,
							60,
							1,
							INT_MAX / 10,
							PGC_USERSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("ultracore_es.health_lag_events",
							"Undelivered events of a consumer from which es_health warns (critical at ten times).",
							NULL,
							&es_health_lag_events,
							10000,
							1,
							100000,
							PGC_USERSET,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("ultracore_es.health_batch_seconds",
							"Time a worker may spend in one batch before es_health warns (critical at ten times).",
							NULL,
							&es_health_batch_seconds,
							60,
							1,
							INT_MAX / 10,
							PGC_USERSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("ultracore_es.health_horizon_seconds",
							"Age of the oldest transaction holding the commit horizon back from which es_health warns (critical at ten times).",
							NULL,
							&es_health_horizon_seconds,
							60,
							1,
							INT_MAX / 10,
							PGC_USERSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("ultracore_es.health_dead_letters",
							"Unresolved dead letters from which es_health reports critical (any one is a warning).",
							NULL,
							&es_health_dead_letters,
							100,
							1,
							INT_MAX,
							PGC_USERSET,
							0,
							NULL, NULL, NULL);
}
