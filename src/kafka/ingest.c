/*-------------------------------------------------------------------------
 *
 * ingest.c
 *	  The Kafka ingest: a service of the ingest workers that appends the
 *	  messages of Kafka topics to the store, each valid one exactly once.
 *	  The consumer, its partitions and offsets, and the batches; how one
 *	  message becomes an append request, or a dead letter, is in
 *	  ingest_message.c.
 *
 * Each of the ultracore_es.kafka_ingest_workers ingest workers is a
 * consumer in group ultracore_es.kafka_group_id, reading
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
 * into the topic they came from; messages of this store's own source are
 * skipped.  The ingest runs only while this server's timeline is the
 * newest to claim the store on the fence topic (fence.c).
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "kafka/kafka.h"

#include <fcntl.h>
#include <unistd.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "core/guc.h"
#include "core/partitions.h"
#include "delivery/consumer.h"
#include "delivery/worker.h"
#include "write/append.h"

/* How often the ingest records the brokers' high watermarks. */
#define WATERMARK_EVERY_MS	1000

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
	rd_kafka_conf_t *conf = es_kafka_client_conf(es_kafka_consumer_properties, errstr, sizeof(errstr));
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
	consumer = es_kafka_client_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr),
						  "ultracore_es.kafka_consumer_properties");
	if (consumer == NULL)
		return false;
	/* Logs and errors come with the messages, from the consumer queue. */
	rd_kafka_poll_set_consumer(consumer);
	if (rd_kafka_set_log_queue(consumer, NULL) != RD_KAFKA_RESP_ERR_NO_ERROR)
		elog(ERROR, "could not forward the consumer's logs");
	/* A byte on the pipe when that queue gets something: see ingest_wait_fd. */
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

/*
 * A batch holds the lock of each aggregate it appends to until it commits:
 * one that ran out of shared memory for them (53200, max_locks_per_
 * transaction) would run out again at every try, so the batches that
 * follow take half as many messages, as often as needed, until
 * kafka_ingest_batch_size is changed.  batch_limit 0: that setting.
 */
static int	batch_limit = 0;
static int	batch_limit_of = 0;

static int
batch_cap(void)
{
	if (batch_limit > 0 && batch_limit_of == es_kafka_ingest_batch_size)
		return batch_limit;
	batch_limit = 0;
	return es_kafka_ingest_batch_size;
}

static void
batch_halve(void)
{
	batch_limit = Max(nbatch / 2, 1);
	batch_limit_of = es_kafka_ingest_batch_size;
	ereport(LOG,
			(errmsg("ultracore_es kafka: a batch of %d messages ran out of memory; the ingest takes at most %d a batch from now on",
					nbatch, batch_limit),
			 errdetail("A batch holds the lock of each aggregate it appends to until it commits."),
			 errhint("Raise max_locks_per_transaction, or set ultracore_es.kafka_ingest_batch_size lower.")));
}

static void
batch_release(void)
{
	int			i;

	for (i = 0; i < nbatch; i++)
		rd_kafka_message_destroy(batch[i]);
	nbatch = 0;
}

/* Append req as es_append would, appended by the kafka:<topic> it was parsed with. */
static void
ingest_append(EsStore *s, EsAppendRequest *req)
{
	es_append_prepare(req);
	es_append_execute(req, s);
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
 * failure, a lock timeout, a full disk, a cancel, an I/O error): the
 * message must not be dead-lettered for them.  Internal errors are neither
 * (internal_error_given_up).
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

/*
 * After a batch that was not stored (but for a partition lost to a
 * rebalance), the next try waits: 0.5 s, doubling up to 30 s, until a
 * batch is stored.  A lock held elsewhere, a full disk or
 * a passing internal error then gets time to go away before a message is
 * given up on (internal_error_given_up).
 */
#define RETRY_FIRST_MS	500
#define RETRY_MAX_MS	30000
static int	retry_ms = 0;
static TimestampTz retry_at = 0;

/*
 * An internal error (SQLSTATE class XX) may be the server's passing trouble
 * or the message's doing (a projection's bug it triggers): the batch is
 * taken again, and when the same message fails so INTERNAL_ERROR_TRIES
 * times in a row, it is dead-lettered instead of stopping the partition for
 * ever.
 */
#define INTERNAL_ERROR_TRIES 5
static struct
{
	char		topic[256];
	int32		partition;
	int64		offset;
	int			tries;
}			internal_failure;

/* Whether the message failed with an internal error too often to try again. */
static bool
internal_error_given_up(rd_kafka_message_t *msg)
{
	const char *topic = rd_kafka_topic_name(msg->rkt);

	if (internal_failure.tries > 0 && internal_failure.partition == msg->partition &&
		internal_failure.offset == msg->offset && strcmp(internal_failure.topic, topic) == 0)
		internal_failure.tries++;
	else
	{
		strlcpy(internal_failure.topic, topic, sizeof(internal_failure.topic));
		internal_failure.partition = msg->partition;
		internal_failure.offset = msg->offset;
		internal_failure.tries = 1;
	}
	if (internal_failure.tries < INTERNAL_ERROR_TRIES)
		return false;
	internal_failure.tries = 0;
	return true;
}

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
 * So does a message whose event is stored already, unless ingest_lookup_ids
 * or a store updated from 1.0 whose 1.0 table keeps ids of its own: its id
 * is not looked up (ids_unseen; duplicates are rare, the lookup costs every
 * message an index probe), es_event_ids' key refuses it, and the careful
 * path then absorbs it.  Across aggregates the events of a batch are
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
	bool		lookup_ids;
	int			nparsed = 0;
	int			first;
	int			last;
	int			i;

	for (i = 0; i < n; i++)
		if (es_kafka_ingest_parse(msgs[i], &reqs[nparsed], &evs[nparsed]))
		{
			order[nparsed] = nparsed;
			nparsed++;
		}
	qsort_arg(order, nparsed, sizeof(int), ingest_order, reqs);
	/* The 1.0 table's ids are not under es_event_ids' key: looked up while it keeps its own. */
	lookup_ids = ingest_lookup_ids || es_partitions_keep_ids(s);
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
		run.ids_unseen = !lookup_ids;
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
	EsRole		was = es_become_owner(s);

	append(s, arg);
	es_become(was);
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

	if (es_kafka_ingest_parse((rd_kafka_message_t *) arg, &req, &ev))
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
			ErrorData  *edata = es_step_in_subtransaction(ingest_one_step, &one);

			if (edata == NULL)
				continue;
			/* Not the message's fault: the batch is taken again from the stored offsets. */
			if (error_is_transient(edata->sqlerrcode))
				ReThrowError(edata);
			if (ERRCODE_TO_CATEGORY(edata->sqlerrcode) == ERRCODE_INTERNAL_ERROR)
			{
				if (!internal_error_given_up(taken.msgs[i]))
					ReThrowError(edata);
				edata->message = psprintf("internal error, %d times in a row: %s",
										  INTERNAL_ERROR_TRIES, edata->message);
			}
			es_kafka_ingest_dead_letter(taken.msgs[i], es_error_text(edata));
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
	return es_kafka_run(INGEST_CONSUMER, rebalance_step);
}

/* After a revocation: give the partitions up; what was taken from them is left to their next owner. */
static void
give_up_revoked(void)
{
	if (!pending_revocation)
		return;
	rd_kafka_assign(consumer, NULL);
	nowned = 0;
	pending_revocation = false;
}

/* The ingest's part of a pass; true when it took a full batch (more may be waiting). */
static bool
ingest_pass(void)
{
	rd_kafka_message_t *msg;
	bool		full;
	char		drained[64];
	bool		fenced;

	/*
	 * Emptied first, whatever this pass does: what arrives after the polls
	 * writes again, and a pass that does not poll (the fence's claims not
	 * read yet) does not leave the worker woken at once, pass after pass,
	 * by a byte it already had.
	 */
	if (wake_pipe[0] >= 0)
		while (read(wake_pipe[0], drained, sizeof(drained)) > 0)
			;
	/* Not while a server on a later timeline serves the store: it leaves the group to that one. */
	if (!es_kafka_fence_open(false, INGEST_CONSUMER, &fenced))
	{
		if (fenced)
		{
			batch_release();
			consumer_destroy();
		}
		return false;
	}
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
	if (retry_at != 0 && GetCurrentTimestamp() < retry_at)
		return false;
	while (nbatch < batch_cap() && (msg = rd_kafka_consumer_poll(consumer, 0)) != NULL)
	{
		give_up_revoked();
		if (msg->err)
		{
			if (msg->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
			{
				es_kafka_client_error("consumer: %s", rd_kafka_message_errstr(msg));
			}
			rd_kafka_message_destroy(msg);
			continue;
		}
		batch[nbatch++] = msg;
	}
	give_up_revoked();
	if (pending_assignment != NULL)
		es_kafka_run(INGEST_CONSUMER, rebalance_step);
	full = (nbatch == batch_cap());
	if (nbatch > 0 || (nowned > 0 && TimestampDifferenceExceeds(watermarks_at, GetCurrentTimestamp(),
																 WATERMARK_EVERY_MS)))
	{
		int			sqlerrcode;
		char	   *error;
		bool		ok;

		ingest_careful = false;
		partition_lost = false;
		ok = es_step_in_transaction(ingest_step, NULL, false, NULL, &sqlerrcode, &error);
		ingest_lookup_ids = !ok;
		if (!ok && !error_is_transient(sqlerrcode))
		{
			/* A message failed: the batch again, its failures dead letters. */
			ingest_careful = true;
			ok = es_kafka_run(INGEST_CONSUMER, ingest_step);
			ingest_careful = false;
		}
		else if (!ok)
		{
			ereport(LOG, (errcode(sqlerrcode), errmsg("ultracore_es kafka: %s", error)));
			es_consumer_record_failure(INGEST_CONSUMER, error);
			if (sqlerrcode == ERRCODE_OUT_OF_MEMORY && nbatch > 1)
				batch_halve();
		}
		/* A partition taken by another member is a rebalance, not a failure: no pause. */
		retry_ms = ok || partition_lost ? 0 : Min(retry_ms == 0 ? RETRY_FIRST_MS : retry_ms * 2, RETRY_MAX_MS);
		retry_at = retry_ms == 0 ? 0 : TimestampTzPlusMilliseconds(GetCurrentTimestamp(), retry_ms);
		if (!ok)
		{
			/* Not stored: start again from the stored offsets, after a while. */
			batch_release();
			if (partition_lost || !ingest_rewind())
				consumer_destroy();
			return false;
		}
	}
	batch_release();
	return full;
}

/* Leave the group and destroy the consumer (and the fence's watcher); what was taken is left to the next owner. */
static void
ingest_stop(void)
{
	batch_release();
	consumer_destroy();
	es_kafka_fence_stop();
	consumer_failed_at = 0;
}

/* The settings the consumer is made with: it is made again when they change. */
static char *
ingest_settings(void)
{
	return psprintf("%s|%s|%s|%s", es_kafka_brokers, es_kafka_consumer_properties,
					es_kafka_ingest_topics, es_kafka_group_id);
}

static char *ingest_made_with = NULL;

/*
 * The service's pass, when brokers and topics are configured: come back at
 * once after a full batch, more may be waiting.
 */
static long
ingest_service_pass(bool *reads_appends)
{
	bool		busy;

	if (es_kafka_ingest_topics == NULL || es_kafka_ingest_topics[0] == '\0')
	{
		ingest_stop();			/* nothing to ingest: the consumer is not left unpolled */
		return es_worker_poll_interval;
	}
	if (!es_kafka_configured(&ingest_made_with, ingest_settings(), ingest_stop))
		return es_worker_poll_interval;
	busy = ingest_pass();
	es_kafka_emit_logs();
	if (retry_at != 0)			/* waiting to try a batch again: wake up for it */
		return Max(Min((long) es_worker_poll_interval,
					   (long) ((retry_at - GetCurrentTimestamp()) / 1000) + 1), 0);
	return busy ? 0 : es_kafka_idle_nap();
}

/*
 * A descriptor that becomes readable when the consumer has something to
 * poll (messages, a rebalance, logs), for the ingest worker to sleep on
 * with its latch; -1 without a consumer.  librdkafka writes to it when
 * the consumer queue stops being empty, so the worker ingests a message
 * as it arrives, not at its next poll interval.
 */
static int
ingest_wait_fd(void)
{
	return consumer != NULL ? wake_pipe[0] : -1;
}

/*
 * kafka_ingest_workers of them (set at server start), in the database Kafka
 * serves, when brokers and topics are configured.
 */
static int
ingest_wanted(bool kafka_database)
{
	if (!kafka_database || es_kafka_brokers == NULL || es_kafka_brokers[0] == '\0' ||
		es_kafka_ingest_topics == NULL || es_kafka_ingest_topics[0] == '\0')
		return 0;
	return es_kafka_ingest_workers;
}

static const EsWorkerService ingest_service = {
	.name = "kafka ingest",
	.wanted = ingest_wanted,
	.pass = ingest_service_pass,
	.wait_fd = ingest_wait_fd,
	.stop = ingest_stop,
};

/* es_kafka_ingest_init: from _PG_init. */
void
es_kafka_ingest_init(void)
{
	es_worker_add_service(&ingest_service);
}
