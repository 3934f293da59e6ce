/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  The background processes of ultracore_es (worker.c, launcher.c): a
 *	  launcher per server starts, in every database with the extension, the
 *	  processes of each service plugged into it from _PG_init (delivery to
 *	  the consumers, the Kafka mirror, the Kafka ingest), which it does not
 *	  know.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_WORKER_H
#define ES_WORKER_H

#include "utils/timestamp.h"

/*
 * A service: work that processes of its own do in passes, in each database
 * that wants them.  Each process of a service is a member (1, 2, ...).
 */
typedef struct EsWorkerService
{
	const char *name;			/* the processes' type: "ultracore_es <name>" */

	/*
	 * How many processes a database with the extension wants now, from the
	 * settings alone (the launcher asks without a database connection);
	 * kafka_database: whether it is the database Kafka serves
	 * (ultracore_es.kafka_database).  A process whose member number is
	 * above it exits.
	 */
	int			(*wanted) (bool kafka_database);

	/* Once per process, connected, before the first pass.  NULL: nothing. */
	void		(*start) (void);

	/*
	 * One pass, in the process's per-pass memory context, outside any
	 * transaction, in a database where the extension is installed and the
	 * workers are enabled.  Returns how long the process may sleep before
	 * the next pass, in milliseconds, and sets *reads_appends when new
	 * events should wake it: commits that append, or the sequencer's
	 * numbering when it calls es_worker_reads_log(true) in the pass.
	 */
	long		(*pass) (bool *reads_appends);

	/* A descriptor that becomes readable when there is work; -1: none.  NULL: never. */
	int			(*wait_fd) (void);

	/*
	 * Let go of what the service holds outside the database (clients,
	 * connections): the workers are disabled, or the process exits.  May
	 * be called when holding nothing.
	 */
	void		(*stop) (void);
} EsWorkerService;

/* worker.c: from _PG_init */
extern void es_worker_add_service(const EsWorkerService *service);
extern void es_worker_init(void);
extern void es_worker_register(void);

/* worker.c: in a worker */
extern int	es_worker_member(void);
extern bool es_worker_claim(const char *consumer, int segment);
extern void es_worker_release(void);
extern void es_worker_busy(const char *what);

/* worker.c: in any backend */
extern void es_worker_wake_at_commit(void);
extern void es_worker_wake_readers_at_commit(void);
extern void es_worker_reads_log(bool reads_log);
extern const char *es_kafka_database_name(void);
extern bool es_worker_kafka_database(const char *database);

extern bool es_worker_first_delivery(int *pid, TimestampTz *started_at);

#endif							/* ES_WORKER_H */
