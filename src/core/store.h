/*-------------------------------------------------------------------------
 *
 * store.h
 *	  The installed extension as a backend sees it (store.c): its schema,
 *	  relations and owner; the saved plans of its queries; calls of the SQL
 *	  functions as the owner of the tables; calls of users' functions as
 *	  their owners; the transaction-id offset and the commit horizon.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_STORE_H
#define ES_STORE_H

#include "access/transam.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/snapshot.h"

/*
 * EsStore describes the installed extension as this backend sees it.  It is
 * resolved from the schema of the SQL function being called and refreshed
 * when a relcache invalidation says one of its relations changed (DROP
 * EXTENSION followed by CREATE EXTENSION, for instance).
 */
typedef struct EsStore
{
	Oid			nspid;			/* schema holding the extension's objects */
	char	   *nspname;		/* its name, quoted for SQL text */
	Oid			owner;			/* role that owns the tables */
	Oid			events_relid;	/* partitioned (1.1): its partitions in partitions.c */
	Oid			event_ids_relid;	/* es_event_ids, the key table (1.1; else invalid) */
	Oid			event_ids_idx;	/* its primary key (event_id) (1.1; else invalid) */
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
	Oid			events_1_0_rowtype; /* of the 1.0 table, a partition since the update; else invalid */
	bool		hashed;			/* es_events has its hash column (1.1) */
	Oid			personal_data_relid;	/* es_personal_data (1.1; else invalid) */
	Oid			subject_keys_relid; /* es_subject_keys (1.1; else invalid) */
	Oid			commit_log_relid;	/* es_commit_log (1.1; else invalid) */
	Oid			commit_log_idx; /* its primary key (seq) (1.1; else invalid) */
	uint32		generation;		/* bumped on every re-resolution */
	/* of the installed catalog, as es_store_current last read it */
	char		version[NAMEDATALEN];	/* pg_extension.extversion */
	bool		current;		/* it is ES_VERSION: the workers serve it */
} EsStore;

/*
 * The catalog version this library is built for.  The SQL functions of
 * older catalogs keep working (their C entry points stay); the background
 * workers wait for ALTER EXTENSION UPDATE.
 */
#define ES_VERSION "1.1"

/*
 * A cache built from the store's tables registers a callback, called with
 * the relation that changed (any of the store's, by the relcache
 * invalidations the catalog trigger sends), or InvalidOid when anything
 * may have: it empties what depends on that relation.  Called during
 * invalidation processing: only flag, never query.
 */
typedef void (*EsStoreChangeCallback) (const EsStore *store, Oid relid);

extern void es_store_on_change(EsStoreChangeCallback callback);

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

/*
 * The role and security context that es_become_owner left, for es_become
 * to go back to: code of the extension that runs outside an SQL function
 * (the workers) reads and writes the store's tables as their owner too.
 */
typedef struct EsRole
{
	Oid			userid;
	int			sec_context;
} EsRole;

extern EsRole es_become_owner(const EsStore *s);
extern void es_become(EsRole role);

extern EsStore *es_store_for_function(FunctionCallInfo fcinfo);
extern Oid	es_extension_schema(char *extversion, size_t len);
extern EsStore *es_store_current(void);
extern EsStore *es_store_resolved(void);
extern void es_call_begin(FunctionCallInfo fcinfo, EsCall *call);
extern void es_call_end(EsCall *call);
extern void es_require_read_committed(const char *function, const char *detail);
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
extern int64 es_last_position(bool settled);
extern int64 es_position_bound(EsStore *s);
extern bool es_max_key(bool read_only, FullTransactionId *max);

#endif							/* ES_STORE_H */
