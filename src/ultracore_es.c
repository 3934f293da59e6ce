/*-------------------------------------------------------------------------
 *
 * ultracore_es.c
 *	  Module entry point of ultracore_es, an event store for core banking
 *	  inside PostgreSQL.
 *
 * The library works both preloaded (shared_preload_libraries) and loaded on
 * first use after CREATE EXTENSION.  Preloaded, it also sets up shared memory
 * and registers the background workers; loaded late, the SQL API works and
 * the workers' features wait for a restart with the library preloaded.
 *
 * The code is in layers, each in a folder of src/ and each calling only the
 * layers below it; a layer above learns what happens below through hooks
 * (listeners of the write path, services of the workers, callbacks of the
 * store's caches) that it registers from _PG_init, bottom-up:
 *
 *	core/		the store and its settings
 *		guc.c			the ultracore_es.* settings
 *		store.c			the installed extension as a backend sees it: schema,
 *						relations, owner, saved plans, calls as the owner,
 *						users' functions, the transaction-id offset
 *		horizon.c		commit order: appenders' keys, the commit horizon
 *		shmem.c			the registry of the modules' shared memory
 *		step.c			steps in (sub)transactions of their own, for the
 *						background processes
 *		validate.c		argument checks shared by the SQL functions
 *		triggers.c		the append-only trigger, the catalog-change trigger
 *		event_hash.c	an event's hash, chained to its aggregate's previous
 *						event (tamper evidence)
 *		event.h, errors.h	the event's columns and limits; SQLSTATEs
 *	privacy/	personal data that can be forgotten
 *		keys.c			the master key file, subjects' keys, AES-256-GCM;
 *						es_forget, es_rewrap_subject_keys
 *		personal_data.c	the registry of personal fields, sealed on append,
 *						revealed on read; sealed snapshot states
 *	write/		the write path
 *		event_type.c	the event-type catalog and its cache
 *		aggregate.c		the aggregate's row, whose lock serializes its writers
 *		append.c		storing an append request
 *		append_hooks.c	what the write path announces, and to whom
 *		append_sql.c	es_append, es_append_batch
 *	read/		reads and aggregate state
 *		read.c			stream and commit-order reads
 *		upcast.c		upcasters
 *		aggregate_type.c reducers, fingerprints, snapshot policies
 *		load.c			folding an aggregate's state; es_load_aggregate
 *		snapshot.c		snapshots, automatic ones listening to appends
 *		ledger.c		ledger blocks and digests; es_verify
 *	delivery/	the background workers and what they deliver
 *		launcher.c		the launcher process, which starts and stops the
 *						workers of every database; the utility hook that
 *						tells it when a database gets or loses the extension
 *		worker.c		the processes, their loop and their services
 *		stats.c			statistics in shared memory
 *		consumer.c		the consumer engine: one batch, exactly once
 *		segment.c		consumers split into segments by aggregate; fences
 *		dead_letter.c	dead letters, and the events parked behind them
 *		consumer_catalog.c	the rules shared by handlers and projections
 *		delivery.c		the service that runs the consumers
 *		handler.c		handlers and dead letters: the SQL functions
 *		projection.c	projections: calls, inline path, waits
 *		projection_rebuild.c	registering, rebuilding, unregistering
 *		read_model.c	the five built-in read models: rows, projection
 *						functions
 *		read_model_fold.c	what each event does to a read model's row
 *		decoder.c		the logical decoding output plugin: each committed
 *						transaction that appended, in commit order
 *		sequencer.c		the service that numbers them into es_commit_log
 *	kafka/		Kafka, the only folder that includes librdkafka
 *		client.c		clients: configuration, creation, logs, settings
 *		mirror.c		the mirror: committed events to topics
 *		mirror_message.c	an event as a message: its ce_* headers
 *		ingest.c		the ingest: topics to appends
 *		ingest_message.c	a message: its append request, or a dead letter
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "core/guc.h"
#include "core/horizon.h"
#include "core/partitions.h"
#include "core/shmem.h"
#include "delivery/consumer.h"
#include "delivery/projection.h"
#include "delivery/sequencer.h"
#include "delivery/stats.h"
#include "delivery/worker.h"
#include "kafka/service.h"
#include "privacy/keys.h"
#include "privacy/personal_data.h"
#include "read/aggregate_type.h"
#include "read/snapshot.h"
#include "write/append.h"
#include "write/event_type.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	/* core */
	es_guc_init();
	es_horizon_init();
	es_partitions_init();
	/* privacy */
	es_keys_init();
	es_personal_data_init();
	/* write */
	es_event_type_init();
	es_append_hooks_init();
	/* read */
	es_aggregate_type_init();
	es_snapshot_init();
	/* delivery: the consumers are the worker's first service */
	es_stats_init();
	es_worker_init();
	es_delivery_init();
	es_projection_init();
	es_sequencer_init();
	/* kafka */
	es_kafka_init();

	es_shmem_init();
	if (process_shared_preload_libraries_in_progress)
		es_worker_register();
	MarkGUCPrefixReserved("ultracore_es");
}
