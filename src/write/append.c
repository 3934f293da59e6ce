/*-------------------------------------------------------------------------
 *
 * append.c
 *	  The write path: store an append request (one or many events to one
 *	  aggregate) with optimistic concurrency, idempotency and commit-order
 *	  safety.  The SQL functions that build requests are in append_sql.c.
 *
 * An append has two steps:
 *
 *	1. the aggregate's lock is taken (a lock in memory, aggregate.c), and
 *	   its current version (its last event) checked against the expected
 *	   version;
 *	2. the events are inserted with the versions that follow, taking their
 *	   positions from the sequence.
 *
 * Hence (DESIGN.md, decision 2):
 *
 *	- the version is checked on the aggregate's own row before a position is
 *	  taken: a losing writer takes no position from the sequence;
 *	- writers of one aggregate queue on its lock and nothing else;
 *	  writers of different aggregates do not wait on each other (but for a
 *	  collision of 64-bit hashes, aggregate.c);
 *	- the unique (aggregate_id, version) index is only a backstop.
 *
 * Both steps use the table access method directly (index probes, heap
 * inserts and index inserts), not SQL statements: executor start-up for a
 * one-row INSERT costs as much as the insert.  The price: es_events fires
 * no triggers on insert, nor es_aggregates on the update of an aggregate's
 * hint (aggregate.c), and neither must be given any; what reacts to an
 * append in its transaction (inline projections, automatic snapshots)
 * listens to the write path instead (append_hooks.c), and partitioning
 * es_events means routing tuples here.
 *
 * A refused append says why: a version conflict, an aggregate of another
 * type, or a commit-order hazard.
 *
 * Commit order.  Events carry a commit-order key, tx_id: the key of their
 * transaction (taken when it first appends, horizon.c), raised to the key of
 * the aggregate's previous event when that is higher.  Readers in commit
 * order sort by (tx_id, position) below the commit horizon (horizon.c).
 * Transactions queue on an aggregate's lock in no particular key order, so
 * an older transaction can append after a younger one; raising its key
 * keeps each aggregate's events in version order in the commit order, and
 * since a key is never below its transaction's own, no reader can have
 * passed it before the writer commits.
 *
 * Idempotency (decision 4).  When the caller names its event ids, they are
 * looked up under the aggregate's lock: the same events already stored are
 * returned as they were, without writing; an id stored with other content is
 * an error.  Identical retries that race queue on the lock, and the later
 * ones find the first one's events.
 *
 * Transaction rules: runs in the caller's transaction as the owner of the
 * tables (es_call_begin).  Any error aborts the statement, so a refused
 * append leaves nothing behind.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "write/append.h"

#include "access/genam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "common/pg_prng.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "tcop/utility.h"
#include "nodes/execnodes.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/xid8.h"

#include "core/errors.h"
#include "core/event.h"
#include "core/event_hash.h"
#include "core/guc.h"
#include "core/horizon.h"
#include "core/partitions.h"
#include "core/validate.h"
#include "privacy/personal_data.h"
#include "write/aggregate.h"
#include "write/event_type.h"

/* Events are inserted in slices of this many (as COPY does). */
#define INSERT_SLICE 1000

/*
 * A time-ordered (version 7, RFC 9562) UUID in its text form, for events
 * appended without an id at now.  Its first 48 bits are the Unix time in
 * milliseconds and the next 12 the fraction of the millisecond (the RFC's
 * "method 3"), so that ids made one after the other sort in order and go to
 * the right edge of the event_id index, as positions do: random (version 4)
 * ids went to a random leaf each, a page read and, after a checkpoint, a
 * full-page image in the WAL per append, and left the index's pages a third
 * empty.  The other 62 bits come from the backend's PRNG, which PostgreSQL
 * seeds from a strong random source when the process starts: event ids need
 * to be unique, not secret, and pg_strong_random costs as much as a B-tree
 * insert.  The primary key on event_id would refuse a collision.  The ids
 * of one backend are in strict order (last_stamp).  palloc'd in the
 * caller's context.
 */
static uint64 last_stamp = 0;	/* of the backend's last id: ms << 12 | fraction */

static char *
append_new_event_id(TimestampTz now)
{
	static const char hex[] = "0123456789abcdef";
	uint64		unix_us = now +
		(POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * USECS_PER_SEC;
	uint64		stamp = (unix_us / 1000) << 12 | (unix_us % 1000) * 4096 / 1000;
	uint64		random = pg_prng_uint64(&pg_global_prng_state);
	uint8		b[16];
	char	   *out = palloc(37);
	int			i;
	int			j = 0;

	/* Within the microsecond of the last id, the next fraction: in order still. */
	stamp = Max(stamp, last_stamp + 1);
	last_stamp = stamp;
	for (i = 0; i < 6; i++)
		b[i] = (uint8) (stamp >> (12 + 8 * (5 - i)));
	b[6] = 0x70 | (uint8) ((stamp >> 8) & 0x0f);
	b[7] = (uint8) stamp;
	memcpy(b + 8, &random, 8);
	b[8] = (b[8] & 0x3f) | 0x80;
	for (i = 0; i < 16; i++)
	{
		if (i == 4 || i == 6 || i == 8 || i == 10)
			out[j++] = '-';
		out[j++] = hex[b[i] >> 4];
		out[j++] = hex[b[i] & 0x0f];
	}
	out[j] = '\0';
	return out;
}

/*
 * The session's W3C trace context (ultracore_es.traceparent, tracestate) as
 * metadata, {"traceparent": ..., "tracestate": ...}; NULL when it sets none.
 */
static Jsonb *
append_trace_context(void)
{
	JsonbParseState *state = NULL;

	if (es_traceparent == NULL || es_traceparent[0] == '\0')
		return NULL;
	(void) pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	es_push_string(&state, WJB_KEY, "traceparent");
	es_push_string(&state, WJB_VALUE, es_traceparent);
	if (es_tracestate != NULL && es_tracestate[0] != '\0')
	{
		es_push_string(&state, WJB_KEY, "tracestate");
		es_push_string(&state, WJB_VALUE, es_tracestate);
	}
	return JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_OBJECT, NULL));
}

/*
 * es_append_prepare: allocate the results of req and fill in what the caller
 * left out (event ids, occurred_at, appended_by: the caller's role; the time).  Runs
 * before es_call_begin, in the caller's memory context, so that everything
 * outlives the SPI connection.  A request naming the same event id twice is
 * refused here.
 */
void
es_append_prepare(EsAppendRequest *req)
{
	int			i;
	int			nids = 0;
	char	  **ids = palloc(sizeof(char *) * req->nevents);
	Jsonb	   *trace = append_trace_context();

	req->now = GetCurrentTimestamp();
	if (req->appended_by == NULL)
		req->appended_by = GetUserNameFromId(GetUserId(), false);
	req->versions = palloc(sizeof(int64) * req->nevents);
	req->positions = palloc(sizeof(int64) * req->nevents);
	req->was_stored = false;
	for (i = 0; i < req->nevents; i++)
	{
		EsEventIn  *ev = &req->events[i];

		if (ev->event_id_given)
			ids[nids++] = ev->event_id;
		else
			ev->event_id = append_new_event_id(req->now);
		if (!ev->occurred_at_given)
			ev->occurred_at = req->now;
		else
			es_check_occurred_at(ev->occurred_at, "occurred_at");
		/* The session's trace context, unless the event carries its own. */
		if (trace != NULL && ev->metadata == NULL)
			ev->metadata = trace;
		else if (trace != NULL &&
				 getKeyJsonValueFromContainer(&ev->metadata->root, "traceparent", strlen("traceparent"), NULL) == NULL)
			ev->metadata = DatumGetJsonbP(DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(ev->metadata),
															  JsonbPGetDatum(trace)));
	}
	qsort(ids, nids, sizeof(char *), pg_qsort_strcmp);
	for (i = 1; i < nids; i++)
		if (strcmp(ids[i - 1], ids[i]) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("event id \"%s\" appears more than once in the batch", ids[i])));
	pfree(ids);
}

/*
 * Check each event against the catalog and the limits, and seal its
 * personal fields (what is stored is what must fit).  Needs SPI (the
 * event-type cache may query the catalog).
 */
static void
append_check_events(EsAppendRequest *req, EsStore *store)
{
	int			i;

	for (i = 0; i < req->nevents; i++)
	{
		EsEventIn  *ev = &req->events[i];
		EsEventType type;

		es_event_type_lookup(ev->event_type, &type);
		if (type.aggregate_type[0] != '\0' &&
			strcmp(type.aggregate_type, req->aggregate_type) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("event type \"%s\" belongs to aggregate type \"%s\", not \"%s\"",
							ev->event_type, type.aggregate_type, req->aggregate_type),
					 errhint("Append it to an aggregate of type \"%s\", or register an event type for \"%s\".",
							 type.aggregate_type, req->aggregate_type)));
		ev->schema_version = type.schema_version;
		if (!es_personal_seal(store, ev->event_type, req->aggregate_id, ev->data, ev->metadata,
							  &ev->stored_data, &ev->stored_metadata))
			ev->stored_data = ev->stored_metadata = NULL;
		es_check_event_size(ev->stored_data ? ev->stored_data : ev->data,
							ev->stored_metadata ? ev->stored_metadata : ev->metadata,
							ev->event_id_given ? ev->event_id : NULL);
	}
}

static bool
text_equal_or_both_null(HeapTuple row, TupleDesc desc, int att, const char *value)
{
	bool		isnull;
	Datum		d = heap_getattr(row, att + 1, desc, &isnull);

	if (isnull || value == NULL)
		return isnull && value == NULL;
	return strcmp(TextDatumGetCString(d), value) == 0;
}

/*
 * Whether the stored data is the given one: personal fields compare by
 * what they seal (sealing again gives other bytes).
 */
static bool
data_equal(EsStore *store, HeapTuple row, TupleDesc desc, Jsonb *value)
{
	bool		isnull;
	Jsonb	   *stored = DatumGetJsonbP(heap_getattr(row, EV_DATA + 1, desc, &isnull));
	Jsonb	   *metadata = DatumGetJsonbP(heap_getattr(row, EV_METADATA + 1, desc, &isnull));

	stored = es_personal_revealed(store, stored, metadata);
	return compareJsonbContainers(&stored->root, &value->root) == 0;
}

/*
 * Whether stored and given metadata differ only in what the store adds:
 * the trace context (a retry runs in a span of its own, and is still the
 * same event) and the list of sealed personal fields.
 */
static bool
metadata_equal(HeapTuple row, TupleDesc desc, Jsonb *value)
{
	bool		isnull;
	Datum		stored = heap_getattr(row, EV_METADATA + 1, desc, &isnull);
	Datum		given = JsonbPGetDatum(value);
	int			i;
	static const char *const added_keys[] = {"traceparent", "tracestate", "personal_data"};

	if (compareJsonbContainers(&DatumGetJsonbP(stored)->root, &value->root) == 0)
		return true;

	for (i = 0; i < (int) lengthof(added_keys); i++)
	{
		stored = DirectFunctionCall2(jsonb_delete, stored, CStringGetTextDatum(added_keys[i]));
		given = DirectFunctionCall2(jsonb_delete, given, CStringGetTextDatum(added_keys[i]));
	}
	return compareJsonbContainers(&DatumGetJsonbP(stored)->root, &DatumGetJsonbP(given)->root) == 0;
}

static int64
int64_att(HeapTuple row, TupleDesc desc, int att)
{
	bool		isnull;

	return DatumGetInt64(heap_getattr(row, att + 1, desc, &isnull));
}

/*
 * The first field in which a stored event differs from the one being
 * appended again, or NULL when it is the same event.
 */
static const char *
append_event_difference(EsStore *store, HeapTuple row, TupleDesc desc, EsAppendRequest *req, EsEventIn *ev)
{
	bool		isnull;

	if (!text_equal_or_both_null(row, desc, EV_AGGREGATE_ID, req->aggregate_id))
		return "aggregate_id";
	if (!text_equal_or_both_null(row, desc, EV_AGGREGATE_TYPE, req->aggregate_type))
		return "aggregate_type";
	if (!text_equal_or_both_null(row, desc, EV_EVENT_TYPE, ev->event_type))
		return "event_type";
	if (!data_equal(store, row, desc, ev->data))
		return "data";
	if (!metadata_equal(row, desc, ev->metadata))
		return "metadata";
	if (!text_equal_or_both_null(row, desc, EV_CAUSATION_ID, ev->causation_id))
		return "causation_id";
	if (!text_equal_or_both_null(row, desc, EV_CORRELATION_ID, ev->correlation_id))
		return "correlation_id";
	if (ev->occurred_at_given &&
		DatumGetTimestampTz(heap_getattr(row, EV_OCCURRED_AT + 1, desc, &isnull)) != ev->occurred_at)
		return "occurred_at";
	return NULL;
}

/*
 * The stored events with the caller's event ids, in the order of req (NULL
 * where none), and how many were found.  Probes of the key table (and of
 * the 1.0 table's primary key), read with SnapshotSelf under the
 * aggregate's lock, as its last event is (aggregate.c): an identical append
 * that committed while this one waited for the lock is seen.  Not a query:
 * a plan for "event_id = ANY ($1)" made while the table was small scans it
 * whole, and keeps doing so as it grows.
 */
static HeapTuple *
append_probe_event_ids(EsAppendRequest *req, EsStore *store, Relation rel, int *nfound)
{
	HeapTuple  *rows = palloc0(sizeof(HeapTuple) * req->nevents);
	int			i;

	*nfound = 0;
	for (i = 0; i < req->nevents; i++)
	{
		if (!req->events[i].event_id_given)
			continue;
		rows[i] = es_event_by_id(store, rel, req->events[i].event_id, SnapshotSelf);
		if (rows[i] != NULL)
			(*nfound)++;
	}
	return rows;
}

/* Order of a request's events by their stored positions; arg is those. */
static int
append_position_order(const void *a, const void *b, void *arg)
{
	const int64 *positions = (const int64 *) arg;
	int64		x = positions[*(const int *) a];
	int64		y = positions[*(const int *) b];

	return (x > y) - (x < y);
}

/*
 * append_find_stored: look up the caller's event ids.  Returns false when
 * none is stored yet.  Returns true, with the stored versions and positions
 * in req, when the whole request was stored before with the same content.
 * Anything in between (an id reused for other content, a batch partly
 * matching an earlier one) is an error.
 */
static bool
append_find_stored(EsAppendRequest *req, EsStore *store)
{
	Relation	rel;
	TupleDesc	desc;
	int			nfound;
	HeapTuple  *rows;
	int		   *order;
	int			i;

	/* Ids the caller knows new, or that the append generated, are not stored yet. */
	if (req->ids_unseen)
		return false;
	for (i = 0; i < req->nevents && !req->events[i].event_id_given; i++)
		;
	if (i == req->nevents)
		return false;

	rel = table_open(store->events_relid, RowExclusiveLock);
	desc = RelationGetDescr(rel);
	rows = append_probe_event_ids(req, store, rel, &nfound);
	if (nfound == 0)
	{
		table_close(rel, NoLock);
		return false;
	}
	if (nfound != req->nevents)
	{
		int			unnamed = 0;

		for (i = 0; i < req->nevents; i++)
			unnamed += !req->events[i].event_id_given;
		for (i = 0; rows[i] == NULL; i++)
			;
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("batch overlaps events stored by an earlier append"),
				 errdetail("%d of its %d events carry event ids that are already stored, for example \"%s\".",
						   nfound, req->nevents, req->events[i].event_id),
				 unnamed > 0 ?
				 errhint("%d of its events name no event id, so a resend cannot be told from new events: name every event's id to retry a batch.",
						 unnamed) :
				 errhint("Resend exactly the earlier batch to retry it, or use new event ids for new events.")));
	}

	/* The earlier append stored them in an order: the retry must repeat it. */
	order = palloc(sizeof(int) * req->nevents);
	for (i = 0; i < req->nevents; i++)
	{
		order[i] = i;
		req->positions[i] = int64_att(rows[i], desc, EV_POSITION);
	}
	qsort_arg(order, req->nevents, sizeof(int), append_position_order, req->positions);
	for (i = 0; i < req->nevents; i++)
	{
		HeapTuple	row = rows[i];
		EsEventIn  *ev = &req->events[i];
		const char *diff;

		if (order[i] != i)
			ereport(ERROR,
					(errcode(ERRCODE_UNIQUE_VIOLATION),
					 errmsg("batch repeats an earlier append in another order"),
					 errdetail("Event \"%s\" is at index %d of the batch; the earlier append stored \"%s\" there.",
							   ev->event_id, i, req->events[order[i]].event_id),
					 errhint("Resend the earlier batch exactly as it was.")));
		diff = append_event_difference(store, row, desc, req, ev);
		if (diff != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_UNIQUE_VIOLATION),
					 errmsg("event id \"%s\" is already used by another event", ev->event_id),
					 errdetail("The stored event with that id differs in %s.", diff),
					 errhint("Use a new event_id for a new event; resend identical content to retry an append.")));
		req->versions[i] = int64_att(row, desc, EV_VERSION);
		if (i > 0 && req->versions[i] != req->versions[i - 1] + 1)
			ereport(ERROR,
					(errcode(ERRCODE_UNIQUE_VIOLATION),
					 errmsg("batch overlaps events stored by earlier appends"),
					 errdetail("Its event ids were stored by more than one append.")));
	}
	table_close(rel, NoLock);
	req->was_stored = true;
	return true;
}

static void
append_raise_conflict(EsAppendRequest *req, int64 actual)
{
	char		expected[64];
	int			i;

	if (req->any)
		strlcpy(expected, "any", sizeof(expected));
	else if (req->expected == ES_EXPECT_NEW)
		strlcpy(expected, "0 (a new aggregate)", sizeof(expected));
	else if (req->expected == ES_EXPECT_EXISTS)
		strlcpy(expected, "-1 (an existing aggregate)", sizeof(expected));
	else
		snprintf(expected, sizeof(expected), INT64_FORMAT, req->expected);

	/*
	 * Without event ids the store cannot tell a retry of an append that
	 * committed (its answer lost with the connection) from a new one: say
	 * so, rather than only advise to append again, which would store the
	 * events twice.
	 */
	for (i = 0; i < req->nevents && !req->events[i].event_id_given; i++)
		;
	ereport(ERROR,
			(errcode(ERRCODE_ES_WRONG_EXPECTED_VERSION),
			 errmsg("version conflict on aggregate \"%s\"", req->aggregate_id),
			 errdetail("Aggregate \"%s\": expected version %s, actual version %lld%s.",
					   req->aggregate_id, expected, (long long) actual,
					   actual == 0 ? " (it does not exist)" : ""),
			 i < req->nevents ?
			 errhint("Reload the aggregate and append again with its current version as expected_version.") :
			 errhint("If this call retries one whose answer was lost, it may have been stored already: read the aggregate's events before appending again. "
					 "Give each event an event_id to make retries safe: a resend with the same ids returns the stored result.")));
}

/*
 * Check the locked aggregate row against the request; raise the error that
 * explains a refusal.
 */
static void
append_check_row(EsAppendRequest *req, const EsAggregateRow *row)
{
	bool		version_ok;

	if (strcmp(row->aggregate_type, req->aggregate_type) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("aggregate \"%s\" is of type \"%s\", not \"%s\"",
						req->aggregate_id, row->aggregate_type, req->aggregate_type),
				 errdetail("An aggregate keeps the type of its first event.")));
	if (req->any)
		version_ok = true;
	else if (req->expected == ES_EXPECT_EXISTS)
		version_ok = row->version > 0;
	else
		version_ok = row->version == req->expected;
	if (!version_ok)
		append_raise_conflict(req, row->version);
	if (row->version > PG_INT64_MAX - req->nevents)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("aggregate \"%s\" has reached the highest version", req->aggregate_id)));
}

/*
 * Whether a unique index of es_events' partitions is named: the 1.0 table's
 * and each partition's carry their table's name before the suffix.
 */
static bool
constraint_is(const char *name, const char *suffix)
{
	size_t		len = strlen(name);
	size_t		slen = strlen(suffix);

	return strncmp(name, "es_events", 9) == 0 && len > slen && strcmp(name + len - slen, suffix) == 0;
}

/*
 * Report a unique violation raised while inserting events in the terms of
 * the event store, or let any other error through.  Called in PG_CATCH.
 */
static void
append_translate_unique_violation(EsAppendRequest *req, MemoryContext cxt)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	if (edata->sqlerrcode != ERRCODE_UNIQUE_VIOLATION || edata->constraint_name == NULL)
		return;
	if (strcmp(edata->constraint_name, "es_event_ids_pkey") == 0 ||
		constraint_is(edata->constraint_name, "_event_id_key"))
	{
		FlushErrorState();
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("event id is already used by an event appended concurrently"),
				 errdetail("%s", edata->detail ? edata->detail : edata->message),
				 errhint("Retry the append: a retry with the same content returns the stored event.")));
	}
	if (constraint_is(edata->constraint_name, "_version_key"))
	{
		FlushErrorState();
		ereport(ERROR,
				(errcode(ERRCODE_ES_WRONG_EXPECTED_VERSION),
				 errmsg("version conflict on aggregate \"%s\"", req->aggregate_id),
				 errdetail("%s", edata->detail ? edata->detail : edata->message),
				 errhint("Reload the aggregate and append again with its current version as expected_version.")));
	}
}

/* A partition of es_events opened for inserts, with its indexes. */
typedef struct InserterPartition
{
	Oid			relid;
	ResultRelInfo *rri;
} InserterPartition;

struct EsEventInserter
{
	EsStore    *store;
	Relation	rel;			/* es_events */
	EState	   *estate;
	TupleTableSlot **slots;		/* rows of es_events' descriptor */
	int			nslots;
	InserterPartition *parts;	/* the partitions inserted into so far */
	int			nparts;
	bool		default_locked; /* the DEFAULT partition is locked: no ATTACH under way */
	ResultRelInfo *ids;			/* es_event_ids (1.1), else NULL */
	TupleTableSlot **id_slots;
};

/* A table opened for inserts into it and its indexes, as the executor does. */
static ResultRelInfo *
inserter_open_table(EsEventInserter *ins, Oid relid)
{
	ResultRelInfo *rri = makeNode(ResultRelInfo);

	InitResultRelInfo(rri, relid == RelationGetRelid(ins->rel) ? ins->rel
					  : table_open(relid, RowExclusiveLock), 1, NULL, 0);
	ExecOpenIndices(rri, false);
	return rri;
}

/*
 * es_event_inserter_open: open es_events for inserts until
 * es_event_inserter_close (its partitions and their indexes as the inserts
 * reach them, and the key table); its slots live in the executor state's
 * memory.  An error in between needs no close: the transaction's abort
 * releases all of it.
 */
EsEventInserter *
es_event_inserter_open(EsStore *store)
{
	EsEventInserter *ins = palloc0(sizeof(EsEventInserter));

	ins->store = store;
	ins->rel = table_open(store->events_relid, RowExclusiveLock);
	if (RelationGetDescr(ins->rel)->natts != (store->hashed ? EV_NATTS : EV_HASH))
		elog(ERROR, "es_events has %d columns, expected %d",
			 RelationGetDescr(ins->rel)->natts, store->hashed ? EV_NATTS : EV_HASH);
	ins->estate = CreateExecutorState();
	if (OidIsValid(store->event_ids_relid))
		ins->ids = inserter_open_table(ins, store->event_ids_relid);
	return ins;
}

void
es_event_inserter_close(EsEventInserter *ins)
{
	int			i;

	for (i = 0; i < ins->nparts; i++)
	{
		ExecCloseIndices(ins->parts[i].rri);
		if (ins->parts[i].rri->ri_RelationDesc != ins->rel)
			table_close(ins->parts[i].rri->ri_RelationDesc, NoLock);
	}
	if (ins->ids)
	{
		ExecCloseIndices(ins->ids);
		table_close(ins->ids->ri_RelationDesc, NoLock);
	}
	ExecResetTupleTable(ins->estate->es_tupleTable, false);
	FreeExecutorState(ins->estate);
	table_close(ins->rel, NoLock);
	pfree(ins);
}

/*
 * The partition an event at position goes to, opened for inserts.  Routed
 * here, as the executor's tuple routing would: by the ranges, else to the
 * DEFAULT partition.  That one is locked first: an ATTACH of a range (the
 * worker's, which takes it ACCESS EXCLUSIVE) may be under way, and the lock
 * waits for it and brings its invalidation, after which the position is
 * routed again; once the lock is held no range can be attached over it.
 */
static ResultRelInfo *
inserter_partition(EsEventInserter *ins, int64 position)
{
	const EsPartition *part;
	int			i;

	for (;;)
	{
		part = es_partition_of(es_partitions(ins->store, ins->rel), position);
		if (part == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_CHECK_VIOLATION),
					 errmsg("no partition of es_events holds position %lld", (long long) position),
					 errhint("Attach es_events_overflow as the DEFAULT partition of es_events again.")));
		if (!part->is_default)
			break;
		if (ins->default_locked)
		{
			/* Readers that take their snapshot from now on look there, up to position. */
			es_overflow_filling(position);
			break;
		}
		LockRelationOid(part->relid, RowExclusiveLock);
		ins->default_locked = true;
	}
	for (i = 0; i < ins->nparts; i++)
		if (ins->parts[i].relid == part->relid)
			return ins->parts[i].rri;
	ins->parts = ins->parts ? repalloc(ins->parts, sizeof(InserterPartition) * (ins->nparts + 1))
		: palloc(sizeof(InserterPartition));
	ins->parts[ins->nparts].relid = part->relid;
	ins->parts[ins->nparts].rri = inserter_open_table(ins, part->relid);
	return ins->parts[ins->nparts++].rri;
}

/*
 * Insert slots[0..n) into their partitions, each run of one partition in
 * one multi-insert, and their index entries; then their ids into the key
 * table.
 */
static void
inserter_insert(EsEventInserter *ins, TupleTableSlot **slots, int n, const int64 *positions,
				CommandId cid)
{
	EState	   *estate = ins->estate;
	int			first;
	int			i;

	for (first = 0; first < n;)
	{
		ResultRelInfo *rri = inserter_partition(ins, positions[first]);
		int			run = 1;

		while (first + run < n && inserter_partition(ins, positions[first + run]) == rri)
			run++;
		if (run == 1)
			table_tuple_insert(rri->ri_RelationDesc, slots[first], cid, 0, NULL);
		else
			table_multi_insert(rri->ri_RelationDesc, slots + first, run, cid, 0, NULL);
		for (i = first; i < first + run; i++)
		{
			(void) ExecInsertIndexTuples(rri, slots[i], estate, false, false, NULL, NIL);
			ResetPerTupleExprContext(estate);
		}
		first += run;
	}
	if (ins->ids == NULL)
		return;
	for (i = 0; i < n; i++)
	{
		TupleTableSlot *id = ins->id_slots[i];
		bool		isnull;

		ExecClearTuple(id);
		id->tts_values[0] = slot_getattr(slots[i], EV_EVENT_ID + 1, &isnull);
		id->tts_values[1] = Int64GetDatum(positions[i]);
		id->tts_isnull[0] = id->tts_isnull[1] = false;
		ExecStoreVirtualTuple(id);
	}
	if (n == 1)
		table_tuple_insert(ins->ids->ri_RelationDesc, ins->id_slots[0], cid, 0, NULL);
	else
		table_multi_insert(ins->ids->ri_RelationDesc, ins->id_slots, n, cid, 0, NULL);
	for (i = 0; i < n; i++)
	{
		(void) ExecInsertIndexTuples(ins->ids, ins->id_slots[i], estate, false, false, NULL, NIL);
		ResetPerTupleExprContext(estate);
	}
}

/*
 * Insert the events of req after version base: heap inserts (one
 * multi-insert per slice for batches) and their index entries, with the
 * unique checks of the indexes, each event hashed and chained to the one
 * before it (last_hash: the aggregate's last stored event); then tell the listeners (inline
 * projections, automatic snapshots, ...).  A unique violation on event_id (two
 * identical retries racing) is reported as such; one on (aggregate_id,
 * version) would mean a writer bypassed the aggregate's lock, and is reported
 * as the version conflict it is.  Through req->inserter, or an inserter of
 * its own.
 */
static void
append_insert_events(EsAppendRequest *req, EsStore *store, int64 base, FullTransactionId tx,
					 const uint8 *last_hash)
{
	EsEventInserter *ins = req->inserter ? req->inserter : es_event_inserter_open(store);
	Relation	rel = ins->rel;
	EState	   *estate = ins->estate;
	MemoryContext cxt = CurrentMemoryContext;
	CommandId	cid = GetCurrentCommandId(true);
	Datum		aggregate_type = CStringGetTextDatum(req->aggregate_type);
	Datum		aggregate_id = CStringGetTextDatum(req->aggregate_id);
	Datum		appended_by = CStringGetTextDatum(req->appended_by);
	int			nslots = Min(req->nevents, INSERT_SLICE);
	uint8		chain[ES_HASH_LEN];
	HeapTuple  *stored = NULL;
	int			first;
	int			i;

	/* Asked once es_events is open for writing: see EsAppendListener. */
	if (es_append_listeners_want_rows())
		stored = palloc(sizeof(HeapTuple) * req->nevents);
	if (ins->nslots < nslots)
	{
		MemoryContext old = MemoryContextSwitchTo(estate->es_query_cxt);

		ins->slots = ins->slots ? repalloc(ins->slots, sizeof(TupleTableSlot *) * nslots)
			: palloc(sizeof(TupleTableSlot *) * nslots);
		if (ins->ids)
			ins->id_slots = ins->id_slots ? repalloc(ins->id_slots, sizeof(TupleTableSlot *) * nslots)
				: palloc(sizeof(TupleTableSlot *) * nslots);
		for (; ins->nslots < nslots; ins->nslots++)
		{
			ins->slots[ins->nslots] = table_slot_create(rel, &estate->es_tupleTable);
			if (ins->ids)
				ins->id_slots[ins->nslots] = table_slot_create(ins->ids->ri_RelationDesc,
															   &estate->es_tupleTable);
		}
		MemoryContextSwitchTo(old);
	}

	memcpy(chain, last_hash, ES_HASH_LEN);
	PG_TRY();
	{
		for (first = 0; first < req->nevents; first += nslots)
		{
			int			n = Min(nslots, req->nevents - first);
			TupleTableSlot **slots = ins->slots;

			CHECK_FOR_INTERRUPTS();
			for (i = 0; i < n; i++)
			{
				EsEventIn  *ev = &req->events[first + i];
				TupleTableSlot *slot = slots[i];
				Datum	   *v = slot->tts_values;
				bool	   *isnull = slot->tts_isnull;

				ExecClearTuple(slot);
				memset(isnull, 0, sizeof(bool) * slot->tts_tupleDescriptor->natts);
				req->versions[first + i] = base + first + i + 1;
				req->positions[first + i] = nextval_internal(store->position_seq, false);
				v[EV_EVENT_ID] = CStringGetTextDatum(ev->event_id);
				v[EV_EVENT_TYPE] = CStringGetTextDatum(ev->event_type);
				v[EV_AGGREGATE_TYPE] = aggregate_type;
				v[EV_AGGREGATE_ID] = aggregate_id;
				v[EV_VERSION] = Int64GetDatum(req->versions[first + i]);
				v[EV_POSITION] = Int64GetDatum(req->positions[first + i]);
				v[EV_TX_ID] = FullTransactionIdGetDatum(tx);
				v[EV_OCCURRED_AT] = TimestampTzGetDatum(ev->occurred_at);
				v[EV_RECORDED_AT] = TimestampTzGetDatum(req->now);
				isnull[EV_CAUSATION_ID] = (ev->causation_id == NULL);
				v[EV_CAUSATION_ID] = ev->causation_id ? CStringGetTextDatum(ev->causation_id) : (Datum) 0;
				isnull[EV_CORRELATION_ID] = (ev->correlation_id == NULL);
				v[EV_CORRELATION_ID] = ev->correlation_id ? CStringGetTextDatum(ev->correlation_id) : (Datum) 0;
				v[EV_DATA] = JsonbPGetDatum(ev->stored_data ? ev->stored_data : ev->data);
				v[EV_METADATA] = JsonbPGetDatum(ev->stored_metadata ? ev->stored_metadata : ev->metadata);
				v[EV_SCHEMA_VERSION] = Int32GetDatum(ev->schema_version);
				v[EV_APPENDED_BY] = appended_by;
				if (store->hashed)
				{
					es_event_hash(v, isnull, chain, chain);
					v[EV_HASH] = es_hash_datum(chain);
				}
				ExecStoreVirtualTuple(slot);
			}
			inserter_insert(ins, slots, n, req->positions + first, cid);
			if (stored != NULL)
				for (i = 0; i < n; i++)
					stored[first + i] = ExecCopySlotHeapTuple(slots[i]);
		}
	}
	PG_CATCH();
	{
		append_translate_unique_violation(req, cxt);
		PG_RE_THROW();
	}
	PG_END_TRY();

	/* Free the rows the inserts copied into the slots. */
	for (i = 0; i < nslots; i++)
		ExecClearTuple(ins->slots[i]);
	es_append_announce_insert(store, req, base, RelationGetDescr(rel), stored, tx);
	if (req->inserter == NULL)
		es_event_inserter_close(ins);
}

/*
 * es_append_execute: check the events of req and store them, or find them
 * stored by an identical earlier append (req->was_stored).  Needs
 * es_call_begin.
 *
 * The event ids the caller named are looked up once the aggregate is locked
 * (or created): an identical retry that waited behind the original then
 * finds it, whatever its expected version says.
 */
void
es_append_execute(EsAppendRequest *req, EsStore *store)
{
	FullTransactionId own;
	EsAggregateRow row;
	int			round;

	PreventCommandIfReadOnly("es_append()");
	PreventCommandIfParallelMode("es_append()");
	append_check_events(req, store);
	own = FullTransactionIdFromU64(U64FromFullTransactionId(es_horizon_key()) + es_xid_offset(true));
	for (round = 0; round < 3; round++)
	{
		/* A new aggregate is created first; anything else is locked first. */
		if (req->any || req->expected != ES_EXPECT_NEW || round > 0)
		{
			if (es_aggregate_lock(store, req->aggregate_id, &row))
			{
				if (append_find_stored(req, store))
					return;
				if (row.version == 0)
					es_aggregate_check_history(req->aggregate_id);
				append_check_row(req, &row);
				/* The commit-order key never goes back within an aggregate. */
				append_insert_events(req, store, row.version,
									 FullTransactionIdFollows(row.last_tx, own) ? row.last_tx : own,
									 row.last_hash);
				es_aggregate_moved(store, req->aggregate_id, &row, req->positions[req->nevents - 1]);
				return;
			}
			if (!req->any && req->expected != ES_EXPECT_NEW)
			{
				if (!append_find_stored(req, store))
					append_raise_conflict(req, 0);
				return;
			}
		}
		if (es_aggregate_create(req->aggregate_id, req->aggregate_type, req->now))
		{
			/* No event can be stored for a new aggregate; ids used elsewhere are refused. */
			(void) append_find_stored(req, store);
			append_insert_events(req, store, 0, own, es_hash_zero);
			es_aggregate_created(store, req->aggregate_id, req->positions[0], req->positions[req->nevents - 1]);
			return;
		}
		/* A concurrent creator won (or rolled back): lock its aggregate next round. */
	}
	elog(ERROR, "aggregate \"%s\" was created and rolled back too often during one append",
		 req->aggregate_id);
}
