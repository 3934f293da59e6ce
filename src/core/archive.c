/*-------------------------------------------------------------------------
 *
 * archive.c
 *	  The old partitions of es_events: es_archive moves those wholly below
 *	  a position out of the hot set, into ultracore_es.archive_tablespace
 *	  (they stay partitions of es_events: every read returns their events);
 *	  es_drop_history drops archived ones from the database once exported
 *	  and covered by snapshots (retention).
 *
 * A partition is moved by a copy, not by ALTER TABLE ... SET TABLESPACE,
 * which holds it ACCESS EXCLUSIVE while it copies the files: every append
 * and every read of an aggregate opens every partition, and would wait that
 * long.  The copy is a new table in the archive tablespace, with the
 * partition's indexes and a CHECK of its range, filled by INSERT ... SELECT
 * while the partition stays attached and readable; then, under a short
 * lock, the partition is detached and dropped and the copy attached in its
 * place (its CHECK spares the ATTACH a scan) under its name.  The copy's
 * rows are the partition's, column for column (their hashes, commit-order
 * keys and positions); the decoder ignores them, the copy not being a
 * partition of es_events while it is filled.
 *
 * Only a settled range is moved (es_commit_horizon_wait, as es_export
 * waits): every position in it was taken and every transaction that took
 * one has ended, so no row arrives after the copy.  And only a range that
 * every consumer (handlers, async projections, the Kafka mirror) has
 * passed: what is archived is what the system is done with.
 *
 * A drop keeps what the reads need to say what is gone: the range in
 * es_dropped_history, the event ids in es_event_ids (never taken again; a
 * lookup of one says it was dropped), and the snapshots loads start from.
 * A read of an aggregate's dropped versions finds a gap in them and says
 * so (read.c).
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/stat.h>

#include "access/table.h"
#include "access/xact.h"
#include "commands/tablespace.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "core/event_hash.h"
#include "core/guc.h"
#include "core/horizon.h"
#include "core/partition_maker.h"
#include "core/partitions.h"
#include "core/store.h"

/* A partition to move, copied out of the cache before any DDL. */
typedef struct ArchiveCandidate
{
	Oid			relid;
	char	   *name;
	int64		from_position;
	int64		to_position;
	Oid			tablespace;		/* InvalidOid: the database's default */
} ArchiveCandidate;

/*
 * The range partitions of es_events lying wholly below before, in position
 * order, copied out of the cache (DDL follows, which rebuilds it), their
 * number in *n, the DEFAULT partition in *default_relid.  es_events stays
 * locked SHARE UPDATE EXCLUSIVE: one archiving or drop at a time, and the
 * partition maker waits for it.
 */
static ArchiveCandidate *
archive_below(EsStore *s, int64 before, int *n, Oid *default_relid)
{
	Relation	events = table_open(s->events_relid, ShareUpdateExclusiveLock);
	const EsPartitions *p;
	ArchiveCandidate *c;
	int			i;

	if (events->rd_rel->relkind != RELKIND_PARTITIONED_TABLE)
		elog(ERROR, "es_events is not partitioned: run ALTER EXTENSION ultracore_es UPDATE");
	p = es_partitions(s, events);
	c = palloc(sizeof(ArchiveCandidate) * Max(p->n, 1));
	*n = 0;
	*default_relid = InvalidOid;
	for (i = 0; i < p->n; i++)
	{
		const EsPartition *part = &p->parts[i];

		if (part->is_default)
			*default_relid = part->relid;
		else if (part->to_position <= before)
		{
			c[*n].relid = part->relid;
			c[*n].name = get_rel_name(part->relid);
			c[*n].from_position = part->from_position;
			c[*n].to_position = part->to_position;
			c[*n].tablespace = get_rel_tablespace(part->relid);
			(*n)++;
		}
	}
	/* DDL refuses a table this session holds open; the lock stays. */
	table_close(events, NoLock);
	return c;
}

/*
 * Refuse the move of c when a consumer has not passed its last event in
 * commit order: its checkpoint (of a split consumer, its lowest segment's)
 * is below that event's (tx_id, position).
 */
static void
archive_check_consumers(EsStore *s, const ArchiveCandidate *c)
{
	char	   *sql;
	bool		isnull;
	char	   *behind;

	sql = psprintf("SELECT pg_catalog.string_agg(k.consumer, ', ' ORDER BY k.consumer)"
				   "  FROM %s.es_consumer_checkpoints k,"
				   "       (SELECT e.tx_id, e.position FROM %s.%s e"
				   "         ORDER BY e.tx_id DESC, e.position DESC LIMIT 1) l"
				   " WHERE k.consumer OPERATOR(pg_catalog.<>) 'kafka_ingest'"
				   "   AND (k.checkpoint_tx, k.checkpoint_position) OPERATOR(pg_catalog.<) (l.tx_id, l.position)",
				   s->nspname, s->nspname, quote_identifier(c->name));
	if (SPI_execute(sql, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not run: %s", sql);
	(void) SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		return;
	behind = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("partition %s of es_events holds events that consumers have not passed", c->name),
			 errdetail("Behind its last event in commit order: %s.", behind),
			 errhint("Archive below a position every consumer has passed (es_consumer_checkpoints), or let them catch up.")));
}

/* Move c into tablespace ts (see the file's comment); the number of events moved. */
static int64
archive_move(EsStore *s, const ArchiveCandidate *c, const char *ts, Oid default_relid)
{
	const char *nsp = s->nspname;
	const char *name = quote_identifier(c->name);
	char	   *copy = psprintf("%s_archiving", c->name);
	const char *qcopy = quote_identifier(copy);
	StringInfoData sql;
	int64		moved;

	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "SET LOCAL default_tablespace = %s;"
					 "CREATE TABLE %s.%s (LIKE %s.%s INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);",
					 quote_identifier(ts), nsp, qcopy, nsp, name);
	if (c->from_position != PG_INT64_MIN)
		appendStringInfo(&sql,
						 "ALTER TABLE %s.%s ADD CONSTRAINT %s CHECK (position >= " INT64_FORMAT
						 " AND position < " INT64_FORMAT ");",
						 nsp, qcopy, quote_identifier(psprintf("%s_range", c->name)),
						 c->from_position, c->to_position);
	appendStringInfo(&sql,
					 "CREATE TRIGGER es_events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON %s.%s"
					 " FOR EACH STATEMENT EXECUTE FUNCTION %s.es_refuse_modification();"
					 "ALTER TABLE %s.%s ENABLE ALWAYS TRIGGER es_events_append_only;"
					 "REVOKE ALL ON TABLE %s.%s FROM PUBLIC;",
					 nsp, qcopy, nsp, nsp, qcopy, nsp, qcopy);
	es_partition_exec(sql.data);
	resetStringInfo(&sql);
	appendStringInfo(&sql, "INSERT INTO %s.%s SELECT * FROM %s.%s ORDER BY position", nsp, qcopy, nsp, name);
	if (SPI_execute(sql.data, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not copy partition %s", c->name);
	moved = (int64) SPI_processed;

	/* The swap: short, and never queueing appends behind a lock wait. */
	if (!es_partition_lock(s->events_relid, false) || !es_partition_lock(c->relid, false) ||
		(OidIsValid(default_relid) && !es_partition_lock(default_relid, false)))
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("could not lock partition %s of es_events without making appends wait", c->name),
				 errdetail("Other transactions were using it: the copy was made and is rolled back."),
				 errhint("Call es_archive again.")));
	resetStringInfo(&sql);
	appendStringInfo(&sql,
					 "ALTER TABLE %s.es_events DETACH PARTITION %s.%s;"
					 "DROP TABLE %s.%s;"
					 "ALTER TABLE %s.%s RENAME TO %s;",
					 nsp, nsp, name, nsp, name, nsp, qcopy, name);
	if (c->from_position == PG_INT64_MIN)
		appendStringInfo(&sql, "ALTER TABLE %s.es_events ATTACH PARTITION %s.%s"
						 " FOR VALUES FROM (MINVALUE) TO (" INT64_FORMAT ");",
						 nsp, nsp, name, c->to_position);
	else
		appendStringInfo(&sql, "ALTER TABLE %s.es_events ATTACH PARTITION %s.%s"
						 " FOR VALUES FROM (" INT64_FORMAT ") TO (" INT64_FORMAT ");",
						 nsp, nsp, name, c->from_position, c->to_position);
	appendStringInfo(&sql, "COMMENT ON TABLE %s.%s IS 'ultracore_es: partition of es_events, archived';",
					 nsp, name);
	es_partition_exec(sql.data);
	ereport(LOG,
			(errmsg("ultracore_es: archived partition %s of es_events (" INT64_FORMAT " events) into tablespace %s",
					c->name, moved, ts)));
	return moved;
}

/*
 * es_archive(before_position bigint) returns bigint
 *
 * Move every partition of es_events lying wholly below before_position,
 * and not archived yet, into ultracore_es.archive_tablespace; returns the
 * number of events moved.
 */
PG_FUNCTION_INFO_V1(es_archive);
Datum
es_archive(PG_FUNCTION_ARGS)
{
	EsCall		call;
	int64		before;
	Oid			tsid;
	ArchiveCandidate *below;
	ArchiveCandidate *candidates;
	int			nbelow;
	int			ncandidates = 0;
	Oid			default_relid;
	int64		last;
	int64		moved = 0;
	int			i;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("before_position must not be NULL")));
	before = PG_GETARG_INT64(0);
	if (es_archive_tablespace == NULL || es_archive_tablespace[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("ultracore_es.archive_tablespace is not set"),
				 errhint("Create a tablespace on the cheaper storage and name it in ultracore_es.archive_tablespace.")));
	tsid = get_tablespace_oid(es_archive_tablespace, true);
	if (!OidIsValid(tsid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("tablespace \"%s\" of ultracore_es.archive_tablespace does not exist", es_archive_tablespace)));
	PreventCommandIfReadOnly("es_archive()");
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("es_archive needs READ COMMITTED"),
				 errdetail("It waits for the appending transactions, then copies with a new snapshot; a transaction snapshot would not see their events."),
				 errhint("Call it in a READ COMMITTED transaction.")));

	es_call_begin(fcinfo, &call);
	below = archive_below(call.store, before, &nbelow, &default_relid);
	candidates = palloc(sizeof(ArchiveCandidate) * Max(nbelow, 1));
	for (i = 0; i < nbelow; i++)
		if (below[i].tablespace != tsid)
			candidates[ncandidates++] = below[i];

	if (ncandidates > 0)
	{
		last = es_last_position(true);
		if (candidates[ncandidates - 1].to_position - 1 > last)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("partition %s of es_events reaches past the last position taken, %lld",
							candidates[ncandidates - 1].name, (long long) last),
					 errdetail("Events may still be appended there."),
					 errhint("Archive below the last position taken.")));
		es_commit_horizon_wait();
	}
	for (i = 0; i < ncandidates; i++)
	{
		archive_check_consumers(call.store, &candidates[i]);
		moved += archive_move(call.store, &candidates[i], es_archive_tablespace, default_relid);
	}
	es_call_end(&call);
	PG_RETURN_INT64(moved);
}

/*
 * Refuse the drop of c unless an export holds its events (an es_exports
 * row whose range covers every position in it) and every aggregate with
 * events in it has a snapshot at or after its last version there (loads
 * then start from the snapshot).  Returns the export's file.
 */
/*
 * The export a drop relies on, read again rather than trusted: its file
 * must be there with the size and SHA-256 es_exports recorded.  Deleted,
 * changed, or left on another host (a restored database keeps the
 * records), it is no copy of the events.
 */
static void
drop_check_export(const char *partition, const char *file, const char *sha256, int64 bytes)
{
	struct stat st;
	uint8		sha[ES_HASH_LEN];
	char		hex[ES_HASH_LEN * 2 + 1];
	int64		n;

	if (stat(file, &st) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the export of partition %s of es_events is missing", partition),
				 errdetail("Could not find file \"%s\": %m.", file),
				 errhint("Export its range again (es_export), then drop.")));
	es_sha256_file(file, sha, &n);
	hex[hex_encode((const char *) sha, ES_HASH_LEN, hex)] = '\0';
	if (n != bytes || strcmp(hex, sha256) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("the export of partition %s of es_events is not the one recorded", partition),
				 errdetail("File \"%s\" has %lld bytes and SHA-256 %s; es_exports recorded %lld bytes and %s.",
						   file, (long long) n, hex, (long long) bytes, sha256),
				 errhint("Export its range again (es_export), then drop.")));
}

static char *
drop_check(EsStore *s, const ArchiveCandidate *c, int64 *events, int64 *first, int64 *last)
{
	const char *nsp = s->nspname;
	const char *name = quote_identifier(c->name);
	char	   *sql;
	bool		isnull;
	char	   *file;
	char	   *missing;

	sql = psprintf("SELECT pg_catalog.count(*), pg_catalog.min(e.position), pg_catalog.max(e.position) FROM %s.%s e",
				   nsp, name);
	if (SPI_execute(sql, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not run: %s", sql);
	*events = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	*first = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	*last = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	if (*events == 0)
		return NULL;
	sql = psprintf("SELECT x.file, x.sha256, x.bytes FROM %s.es_exports x"
				   " WHERE x.from_position OPERATOR(pg_catalog.<=) " INT64_FORMAT
				   "   AND x.to_position OPERATOR(pg_catalog.>) " INT64_FORMAT
				   " ORDER BY x.exported_at DESC LIMIT 1", nsp, *first, *last);
	if (SPI_execute(sql, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not run: %s", sql);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("partition %s of es_events is not exported", c->name),
				 errdetail("No export in es_exports holds its positions " INT64_FORMAT " to " INT64_FORMAT ".",
						   *first, *last),
				 errhint("Export them first: es_export(" INT64_FORMAT ", " INT64_FORMAT ", directory).",
						 *first, *last + 1)));
	file = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	drop_check_export(c->name, file, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2),
					  DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull)));
	/* A dead letter is retried from its event (es_retry_dead_letter): kept until it is resolved. */
	sql = psprintf("SELECT pg_catalog.count(*) FROM %s.es_dead_letters d"
				   " WHERE d.status OPERATOR(pg_catalog.<>) 'resolved'"
				   "   AND d.position OPERATOR(pg_catalog.>=) " INT64_FORMAT
				   "   AND d.position OPERATOR(pg_catalog.<=) " INT64_FORMAT, nsp, *first, *last);
	if (SPI_execute(sql, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not run: %s", sql);
	if (DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) > 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s dead letters not resolved hold events of partition %s of es_events",
						SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), c->name),
				 errdetail("A dead letter is retried from its event (es_retry_dead_letter); a consumer that retried one dropped would stop there."),
				 errhint("Retry them until they are resolved (es_dead_letter_queue lists them), then drop.")));
	sql = psprintf("SELECT pg_catalog.count(*), pg_catalog.string_agg(a.aggregate_id, ', ' ORDER BY a.aggregate_id)"
				   "         FILTER (WHERE a.n OPERATOR(pg_catalog.<=) 5)"
				   "  FROM (SELECT l.aggregate_id, pg_catalog.row_number() OVER (ORDER BY l.aggregate_id) AS n"
				   "          FROM (SELECT e.aggregate_id, pg_catalog.max(e.version) AS version FROM %s.%s e"
				   "                 GROUP BY e.aggregate_id) l"
				   "         WHERE NOT EXISTS (SELECT FROM %s.es_snapshots t"
				   "                            WHERE t.aggregate_id OPERATOR(pg_catalog.=) l.aggregate_id"
				   "                              AND t.version OPERATOR(pg_catalog.>=) l.version)) a",
				   nsp, name, nsp);
	if (SPI_execute(sql, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not run: %s", sql);
	if (DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) > 0)
	{
		missing = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s aggregates with events in partition %s of es_events have no snapshot at or after them",
						SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), c->name),
				 errdetail("For example: %s.", missing),
				 errhint("Save their snapshots (es_set_snapshot_policy, es_rebuild_snapshots), then drop.")));
	}
	return file;
}

/*
 * es_drop_history(before_position bigint) returns bigint
 *
 * Drop every archived partition of es_events lying wholly below
 * before_position, each only once exported and snapshotted (drop_check);
 * returns the number of events dropped.  Each drop is recorded in
 * es_dropped_history.  Their ids stay in es_event_ids: an id is never
 * taken again, and a lookup of one says it was dropped.
 */
PG_FUNCTION_INFO_V1(es_drop_history);
Datum
es_drop_history(PG_FUNCTION_ARGS)
{
	EsCall		call;
	int64		before;
	Oid			tsid;
	ArchiveCandidate *candidates;
	int			ncandidates;
	Oid			default_relid;
	int64		dropped = 0;
	int			i;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("before_position must not be NULL")));
	before = PG_GETARG_INT64(0);
	tsid = (es_archive_tablespace && es_archive_tablespace[0]) ? get_tablespace_oid(es_archive_tablespace, true)
		: InvalidOid;
	PreventCommandIfReadOnly("es_drop_history()");

	es_call_begin(fcinfo, &call);
	candidates = archive_below(call.store, before, &ncandidates, &default_relid);
	for (i = 0; i < ncandidates; i++)
		if (!OidIsValid(tsid) || candidates[i].tablespace != tsid)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("partition %s of es_events is not archived", candidates[i].name),
					 errdetail("Only partitions in ultracore_es.archive_tablespace are dropped: every consumer has passed their events."),
					 errhint("Archive them first: es_archive(" INT64_FORMAT ").", before)));

	for (i = 0; i < ncandidates; i++)
	{
		const ArchiveCandidate *c = &candidates[i];
		int64		n;
		int64		first;
		int64		last;
		char	   *file = drop_check(call.store, c, &n, &first, &last);

		/* DETACH locks the DEFAULT partition too: asked without waiting, as in es_archive. */
		if (!es_partition_lock(call.store->events_relid, false) || !es_partition_lock(c->relid, false) ||
			(OidIsValid(default_relid) && !es_partition_lock(default_relid, false)))
			ereport(ERROR,
					(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
					 errmsg("could not lock partition %s of es_events without making appends wait", c->name),
					 errhint("Call es_drop_history again.")));
		es_partition_exec(psprintf("INSERT INTO %s.es_dropped_history (partition, from_position, to_position,"
								   " first_position, last_position, events, export_file, dropped_at, dropped_by)"
								   " VALUES (%s, %s, " INT64_FORMAT ", %s, %s, " INT64_FORMAT ", %s,"
								   " pg_catalog.now(), %s);"
								   "ALTER TABLE %s.es_events DETACH PARTITION %s.%s;"
								   "DROP TABLE %s.%s",
								   call.store->nspname, quote_literal_cstr(c->name),
								   c->from_position == PG_INT64_MIN ? "NULL" : psprintf(INT64_FORMAT, c->from_position),
								   c->to_position,
								   n > 0 ? psprintf(INT64_FORMAT, first) : "NULL",
								   n > 0 ? psprintf(INT64_FORMAT, last) : "NULL",
								   n, file ? quote_literal_cstr(file) : "NULL",
								   quote_literal_cstr(GetUserNameFromId(call.caller, false)),
								   call.store->nspname, call.store->nspname, quote_identifier(c->name),
								   call.store->nspname, quote_identifier(c->name)));
		ereport(LOG,
				(errmsg("ultracore_es: dropped partition %s of es_events (" INT64_FORMAT " events, exported to %s)",
						c->name, n, file ? file : "-")));
		dropped += n;
	}
	es_call_end(&call);
	PG_RETURN_INT64(dropped);
}
