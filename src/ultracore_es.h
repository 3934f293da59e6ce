/*-------------------------------------------------------------------------
 *
 * ultracore_es.h
 *	  Declarations shared by the C files of ultracore_es.
 *
 * Every exported symbol carries the es_ prefix (EsXxx for types).  The
 * files, one responsibility each:
 *
 *	ultracore_es.c	PG_MODULE_MAGIC and _PG_init
 *	guc.c			the ultracore_es.* settings
 *	store.c			per-backend knowledge of the installed extension: its
 *					schema, relations, owner, prepared plans and the
 *					transaction-id offset of the store
 *	event_type.c	the event-type catalog and its backend-local cache
 *	validate.c		argument checks and defaults shared by the SQL functions
 *	append.c		the write path: stores an append request
 *	append_sql.c	es_append and es_append_batch, which build requests
 *	aggregate.c		the per-aggregate row whose lock serializes writers
 *	read.c			stream and commit-order reads
 *	upcast.c		upcasters: registration, and upgrading payloads on read
 *	aggregate_type.c reducers, fingerprints and snapshot policies per type
 *	state.c			folding an aggregate's state; es_load_aggregate
 *	snapshot.c		snapshots: manual, automatic, listing, rebuilding
 *	shmem.c			shared counters, the worker's latch, commit hooks
 *	worker.c		the background worker: its main loop
 *	consumer.c		the consumer engine: a batch of a consumer, exactly once
 *	handler.c		handlers and dead letters: the SQL functions
 *	triggers.c		the append-only trigger and the catalog-invalidation trigger
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ULTRACORE_ES_H
#define ULTRACORE_ES_H

#include "postgres.h"

#include "access/htup.h"
#include "access/tupdesc.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

/*
 * SQLSTATEs of ultracore_es.
 *
 * Standard codes are used wherever one fits (22023 for a bad argument, 42704
 * for an unknown event type, 40001 for an append that would break commit
 * order, 54000 for an oversized event, 23505 for an event id reused with other
 * content).  Only what a client must branch on gets a code of its own, in the
 * implementation-defined class "UE":
 *
 *	UE001	wrong_expected_version	the aggregate's current version is not the
 *									one the append expected (optimistic
 *									concurrency conflict); the detail names the
 *									aggregate, the expected and the actual
 *									version.  Reload the aggregate and retry.
 */
#define ERRCODE_ES_WRONG_EXPECTED_VERSION	MAKE_SQLSTATE('U','E','0','0','1')

/*
 * Columns of es_events, 0-based, in the order of the install script.  Code
 * that reads or writes rows by position uses these and checks the relation's
 * columns' names once per store resolution (store.c).
 */
typedef enum EsEventColumn
{
	EV_EVENT_ID, EV_EVENT_TYPE, EV_AGGREGATE_TYPE, EV_AGGREGATE_ID, EV_VERSION, EV_POSITION,
	EV_TX_ID, EV_OCCURRED_AT, EV_RECORDED_AT, EV_CAUSATION_ID, EV_CORRELATION_ID, EV_DATA,
	EV_METADATA, EV_SCHEMA_VERSION, EV_APPENDED_BY, EV_NATTS
} EsEventColumn;

/* Lengths, in bytes, beyond which an identifier is refused. */
#define ES_MAX_ID_LEN		255		/* event, aggregate, causation, correlation ids */
#define ES_MAX_NAME_LEN		128		/* event type and aggregate type names */

/*
 * expected_version sentinels (NULL means "any version"):
 *	0	the aggregate must not exist yet
 *	-1	the aggregate must already exist, whatever its version
 */
#define ES_EXPECT_NEW		0
#define ES_EXPECT_EXISTS	(-1)

/* guc.c */
extern int	es_max_event_bytes;
extern char *es_worker_database;
extern bool es_worker_enabled;
extern int	es_worker_poll_interval;
extern int	es_worker_batch_size;
extern int	es_handled_retention;
extern char *es_kafka_brokers;
extern char *es_kafka_topic_prefix;
extern char *es_kafka_producer_properties;
extern char *es_kafka_consumer_properties;
extern char *es_kafka_ingest_topics;
extern char *es_kafka_group_id;
extern char *es_kafka_partitioner;
extern char *es_kafka_source;
extern bool es_kafka_transactional;
extern int	es_kafka_batch_size;
extern int	es_kafka_ingest_batch_size;
extern int	es_kafka_ingest_workers;
extern void es_guc_init(void);

/* shmem.c: counters, the worker's latch, commit times (when preloaded) */
extern void es_shmem_init(void);
extern void es_shmem_note_append(int n, FullTransactionId key);
extern void es_wake_worker(bool for_appends);
extern void es_shmem_worker_reads_appends(bool reads);
extern void es_wake_worker_at_commit(void);
extern void es_shmem_register_worker(void);
extern TimestampTz es_shmem_commit_time(FullTransactionId key, TimestampTz fallback);
extern void es_shmem_record_applied(const char *consumer, int n, const uint64 *latencies_us,
									TimestampTz now);
extern void es_shmem_note_projected(const char *projection, int n);

/* worker.c */
extern void es_worker_register(void);
PGDLLEXPORT void es_worker_main(Datum arg);

/* handler.c: checks shared with projections */
extern char *es_arg_consumer_name(FunctionCallInfo fcinfo, int argno, const char *what);
extern void es_check_consumer_function(Oid fn, Oid events_rowtype, Oid caller, const char *what);
extern void es_check_event_type_filter(ArrayType *types);
extern void es_check_retry_policy(int32 max_retries, Interval *backoff);


/* kafka.c */
extern bool es_kafka_mirror_pass(void);
extern bool es_kafka_ingest_pass(void);
extern int	es_kafka_ingest_wait_fd(void);
extern void es_kafka_stop(void);

/* consumer.c */
extern int	es_consumer_run(const char *name, TimestampTz *next_due);
extern char *es_consumer_error_text(ErrorData *edata);
extern ErrorData *es_subtransaction(void (*fn) (void *arg), void *arg);

/*
 * store.c
 *
 * EsStore describes the installed extension as this backend sees it.  It is
 * resolved from the schema of the SQL function being called and refreshed when
 * a relcache invalidation says one of its relations changed (DROP EXTENSION
 * followed by CREATE EXTENSION, for instance).
 */
typedef struct EsStore
{
	Oid			nspid;			/* schema holding the extension's objects */
	char	   *nspname;		/* its name, quoted for SQL text */
	Oid			owner;			/* role that owns the tables */
	Oid			events_relid;
	Oid			events_id_idx;	/* primary key (event_id) */
	Oid			events_version_idx; /* unique (aggregate_id, version) */
	Oid			position_seq;	/* es_events_position_seq */
	Oid			aggregates_relid;
	Oid			event_types_relid;
	Oid			clusters_relid;
	Oid			reducers_relid;
	Oid			upcasters_relid;
	Oid			policies_relid; /* es_snapshot_policies */
	Oid			snapshots_relid;
	Oid			projections_relid;
	Oid			events_rowtype; /* composite type of es_events */
	uint32		generation;		/* bumped on every re-resolution */
} EsStore;

/* worker.c: a step of the worker in a transaction of its own */
extern bool es_worker_transaction(void (*fn) (EsStore *s, void *arg), void *arg, bool report,
								  bool *installed, int *sqlerrcode, char **error);
extern void es_worker_record_failure(const char *name, const char *message);

/*
 * A query of the extension, prepared once per backend and kept.
 *
 * The SQL text names the extension's schema as @extschema@ and qualifies
 * every function, operator and type with pg_catalog: the plan cache re-parses
 * a saved plan under the caller's search_path whenever that path changes, so
 * nothing in the text may depend on it.
 */
#define ES_PLAN_MAX_ARGS 24

typedef struct EsPlan
{
	const char *sql;
	int			nargs;
	Oid			argtypes[ES_PLAN_MAX_ARGS];
	bool		generic;		/* always the generic plan (see es_plan) */
	SPIPlanPtr	plan;
	uint32		generation;
} EsPlan;

/*
 * State saved by es_call_begin and restored by es_call_end: the caller's role
 * and security context.  SQL-callable functions of the extension run their
 * queries as the owner of its tables, the way RI triggers run as the table
 * owner, so that callers need EXECUTE on the function and nothing else.
 */
typedef struct EsCall
{
	EsStore    *store;
	Oid			caller;
	int			sec_context;
} EsCall;

extern EsStore *es_store_for_function(FunctionCallInfo fcinfo);
extern EsStore *es_store_current(void);
extern void es_call_begin(FunctionCallInfo fcinfo, EsCall *call);
extern void es_call_end(EsCall *call);
extern SPIPlanPtr es_plan(EsPlan *p);
/*
 * A user's reducer or upcaster, with the role it runs as: its owner, never
 * the owner of the event store.
 */
typedef struct EsUserFunction
{
	FmgrInfo	flinfo;			/* fn_oid invalid: none */
	Oid			owner;
} EsUserFunction;

extern void es_user_function_init(EsUserFunction *f, Oid fn, MemoryContext cxt);
extern Datum es_call_user_function(EsUserFunction *f, Datum arg1, Datum arg2, bool *isnull);
extern uint64 es_xid_offset(bool for_write);
extern FullTransactionId es_commit_horizon_of(Snapshot snapshot);

/* event_type.c */
typedef struct EsEventType
{
	char		aggregate_type[ES_MAX_NAME_LEN + 1];	/* "" = any aggregate type */
	int32		schema_version;
} EsEventType;

extern void es_event_type_lookup(const char *event_type, EsEventType *out);
extern EsUserFunction *es_event_type_upcaster(const char *event_type, int32 from_version);
extern void es_event_type_cache_reset(void);

/* read.c */
typedef void (*EsRowCallback) (Datum *values, bool *nulls, void *arg);
extern void es_read_rows(EsPlan *plan, Datum *args, char *nulls, bool read_only,
						 bool has_end, TimestampTz end, EsRowCallback fn, void *arg);
extern void es_read_stream(const char *aggregate_id, int64 from_version, int64 to_version,
						   bool read_only, bool has_end, TimestampTz end,
						   EsRowCallback fn, void *arg);
extern void es_read_event(const char *event_id, bool read_only, EsRowCallback fn, void *arg);
extern EsPlan *es_commit_order_plan(void);

/* upcast.c */
extern void es_upcast_row(Datum *values, bool *nulls);
extern void es_check_user_function(Oid fn, const char *role, int nargs, const Oid *argtypes,
								   const char *signature, Oid caller);

/*
 * aggregate_type.c: what each aggregate type is folded with, the fingerprint
 * of that, and its snapshot policy.  A returned pointer is valid until the
 * next call.
 */
typedef struct EsAggregateTypeInfo
{
	char		name[ES_MAX_NAME_LEN + 1];	/* hash key */
	bool		reducer_loaded;
	EsUserFunction reducer;		/* flinfo.fn_oid invalid: the default reducer */
	char	   *reducer_name;	/* as recorded in snapshots */
	char	   *fingerprint;	/* NULL until computed */
	bool		policy_loaded;
	int32		snapshot_every; /* 0: no automatic snapshots */
} EsAggregateTypeInfo;

extern EsAggregateTypeInfo *es_aggregate_type_reducer(const char *aggregate_type);
extern const char *es_aggregate_type_fingerprint(const char *aggregate_type);
extern int32 es_aggregate_type_snapshot_every(const char *aggregate_type);
extern void es_aggregate_type_cache_reset(void);
extern bool es_is_creation_event(const char *event_type);

/*
 * state.c: an aggregate's state, folded from its latest usable snapshot and
 * the events after it.
 */
typedef struct EsAggregateState
{
	char		aggregate_type[ES_MAX_NAME_LEN + 1];	/* "" when it does not exist */
	Jsonb	   *state;			/* NULL at version 0 */
	int64		version;
	int64		snapshot_version;	/* 0: folded from the first event */
	int64		events_applied;
} EsAggregateState;

extern bool es_aggregate_head(const char *aggregate_id, bool read_only, char *type,
							  int64 *current);
extern void es_load_state(EsStore *s, const char *aggregate_id, int64 at_version,
						  bool has_time, TimestampTz at_time, bool read_only,
						  EsAggregateState *out);

/* snapshot.c */
extern void es_snapshot_after_append(EsStore *s, const char *aggregate_id,
									 const char *aggregate_type, int64 old_version,
									 int64 new_version, const char *appended_by);

/*
 * aggregate.c: the row of es_aggregates whose lock serializes an aggregate's
 * writers.
 */
typedef struct EsAggregateRow
{
	char		aggregate_type[ES_MAX_NAME_LEN + 1];
	int64		version;		/* current version, 0 before the first event */
	FullTransactionId last_tx;	/* commit-order key (tx_id) of the last event */
} EsAggregateRow;

extern bool es_aggregate_lock(EsStore *s, const char *aggregate_id, EsAggregateRow *row);
extern bool es_aggregate_create(const char *aggregate_id, const char *aggregate_type,
								TimestampTz now);

/* validate.c */
extern char *es_arg_id(FunctionCallInfo fcinfo, int argno, const char *what, bool required);
extern char *es_arg_name(FunctionCallInfo fcinfo, int argno, const char *what, bool required);
extern void es_check_id(const char *value, const char *what);
extern void es_check_name(const char *value, const char *what);
extern void es_check_object(Jsonb *jb, const char *what);
extern void es_check_event_size(Jsonb *data, Jsonb *metadata, const char *event_id);
extern int64 es_arg_expected_version(FunctionCallInfo fcinfo, int argno, bool *any);
extern Jsonb *es_empty_object(void);

/* projection.c */
extern void es_check_not_projection(const char *name);
extern void es_projection_cache_reset(void);
extern bool es_inline_projections_exist(void);
extern void es_project_inline(EsStore *s, TupleDesc desc, HeapTuple *events, int nevents);

#endif							/* ULTRACORE_ES_H */
