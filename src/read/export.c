/*-------------------------------------------------------------------------
 *
 * export.c
 *	  es_export: the events of a range of positions written to files on the
 *	  server, with a manifest, and recorded in es_exports: the copy of the
 *	  history kept outside the database.
 *
 * The range must be settled: every transaction that took a position in it
 * has ended, so that no event can still appear there and the file is the
 * range's whole content for good.  Positions are taken after the appending
 * transaction registered in the horizon registry (horizon.c), so the range
 * [from, to) is settled once to - 1 is at most the last position taken and
 * every transaction registered when that was read has ended
 * (es_commit_horizon_wait).  The store is append-only: any later snapshot
 * sees the same rows.
 *
 * Two files, named by the range, zero-padded so that they sort by position:
 *	  es_events_<from>_<to>.csv		every column of es_events as stored
 *									(personal fields stay sealed), by position,
 *									with a header line: COPY's CSV format
 *	  es_events_<from>_<to>.json		the manifest: the range, the number of
 *									events, the first and last position, the
 *									events file's size and SHA-256
 * Each is written under a ".partial" name, synced and renamed: a file with
 * its final name is complete, and the manifest is renamed last.  An export
 * never overwrites one.  Exports queue on es_exports' lock: two of one range
 * into one directory would write the same ".partial" files.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/stat.h>
#include <unistd.h>

#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"

#include "core/event_hash.h"
#include "core/horizon.h"
#include "core/store.h"

/* One export at a time: two of the same range would write the same files. */
static EsPlan lock_plan = {
	"LOCK TABLE @extschema@.es_exports IN SHARE ROW EXCLUSIVE MODE", 0, {0}
};

static EsPlan range_plan = {
	"SELECT pg_catalog.count(*), pg_catalog.min(e.position), pg_catalog.max(e.position)"
	" FROM @extschema@.es_events e"
	" WHERE e.position OPERATOR(pg_catalog.>=) $1 AND e.position OPERATOR(pg_catalog.<) $2",
	2, {INT8OID, INT8OID}
};

static EsPlan record_plan = {
	"INSERT INTO @extschema@.es_exports"
	" (file, from_position, to_position, events, bytes, sha256, manifest, exported_at, exported_by)"
	" SELECT $1, $2, $3, $4, $7, $8, m.manifest, pg_catalog.now(), $10"
	" FROM (SELECT pg_catalog.jsonb_build_object("
	"   'format', 'ultracore_es events 1',"
	"   'from_position', $2, 'to_position', $3, 'events', $4,"
	"   'first_position', $5, 'last_position', $6,"
	"   'file', $9, 'bytes', $7, 'sha256', $8,"
	"   'exported_at', pg_catalog.now(), 'exported_by', $10,"
	"   'database', pg_catalog.current_database(),"
	"   'extension_version', (SELECT x.extversion FROM pg_catalog.pg_extension x"
	"                         WHERE x.extname OPERATOR(pg_catalog.=) 'ultracore_es')) AS manifest) m"
	" RETURNING manifest",
	10, {TEXTOID, INT8OID, INT8OID, INT8OID, INT8OID, INT8OID, INT8OID, TEXTOID, TEXTOID, TEXTOID}
};

/* path exists (it is not to be overwritten)? */
static bool
export_exists(const char *path)
{
	struct stat st;

	if (stat(path, &st) == 0)
		return true;
	if (errno != ENOENT)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not stat file \"%s\": %m", path)));
	return false;
}

/* The directory, made when missing (not its parents). */
static void
export_directory(const char *dir)
{
	struct stat st;

	if (!is_absolute_path(dir))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("directory must be an absolute path, not \"%s\"", dir),
				 errhint("Name a directory of the database server, such as '/var/backups/ultracore_es'.")));
	if (MakePGDirectory(dir) != 0 && errno != EEXIST)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create directory \"%s\": %m", dir)));
	if (stat(dir, &st) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not stat directory \"%s\": %m", dir)));
	if (!S_ISDIR(st.st_mode))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("\"%s\" is not a directory", dir)));
}

/* Write text to path, synced. */
static void
export_write_file(const char *path, const char *text)
{
	FILE	   *f = AllocateFile(path, PG_BINARY_W);

	if (f == NULL)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create file \"%s\": %m", path)));
	if (fwrite(text, 1, strlen(text), f) != strlen(text) || fflush(f) != 0 ||
		pg_fsync(fileno(f)) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not write file \"%s\": %m", path)));
	if (FreeFile(f) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not close file \"%s\": %m", path)));
}

/*
 * es_export(from_position bigint, to_position bigint, directory text)
 * returns jsonb
 *
 * Export the events at from_position <= position < to_position (see the
 * file header) and return the manifest.  Waits for the transactions that
 * appended when it was called.  The caller needs pg_write_server_files, as
 * for COPY to a file: the files are written by the server, as the owner of
 * the store's tables, who reads every event.
 */
PG_FUNCTION_INFO_V1(es_export);
Datum
es_export(PG_FUNCTION_ARGS)
{
	EsCall		call;
	int64		from;
	int64		to;
	int64		last;
	char	   *dir;
	char		name[64];
	char	   *events_path;
	char	   *events_partial;
	char	   *manifest_path;
	char	   *manifest_partial;
	Datum		args[10];
	Datum		first;
	Datum		last_found;
	bool		isnull;
	int64		nevents;
	int			nestlevel;
	int64		bytes;
	uint8		sha[ES_HASH_LEN];
	char		sha_hex[ES_HASH_LEN * 2 + 1];
	Jsonb	   *manifest;
	StringInfoData sql;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("from_position, to_position and directory must not be NULL")));
	from = PG_GETARG_INT64(0);
	to = PG_GETARG_INT64(1);
	dir = text_to_cstring(PG_GETARG_TEXT_PP(2));
	if (from < 1 || to <= from)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid range of positions [%lld, %lld)", (long long) from, (long long) to),
				 errdetail("Positions start at 1; to_position is the first position after the range.")));
	PreventCommandIfReadOnly("es_export()");
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("es_export needs READ COMMITTED"),
				 errdetail("It waits for the appending transactions, then reads with a new snapshot; a transaction snapshot would not see their events."),
				 errhint("Call it in a READ COMMITTED transaction.")));
	if (!has_privs_of_role(GetUserId(), ROLE_PG_WRITE_SERVER_FILES))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to export events to files on the server"),
				 errdetail("Only roles with the privileges of the \"pg_write_server_files\" role may write files on the server.")));

	es_call_begin(fcinfo, &call);
	if (SPI_execute_plan(es_plan(&lock_plan), NULL, NULL, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not lock es_exports");
	last = es_last_position(true);
	if (to - 1 > last)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("range [%lld, %lld) reaches past the last position taken, %lld",
						(long long) from, (long long) to, (long long) last),
				 errdetail("Events may still be appended there."),
				 errhint("Export up to a position already taken: to_position at most %lld.",
						 (long long) last + 1)));

	export_directory(dir);
	snprintf(name, sizeof(name), "es_events_%019lld_%019lld", (long long) from, (long long) to);
	events_path = psprintf("%s/%s.csv", dir, name);
	manifest_path = psprintf("%s/%s.json", dir, name);
	events_partial = psprintf("%s.partial", events_path);
	manifest_partial = psprintf("%s.partial", manifest_path);
	if (export_exists(events_path) || export_exists(manifest_path))
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_FILE),
				 errmsg("range [%lld, %lld) is already exported in that directory",
						(long long) from, (long long) to),
				 errdetail("\"%s\" holds \"%s.csv\" or \"%s.json\"; an export never overwrites one.",
						   dir, name, name),
				 errhint("Export into another directory, or remove the files first.")));

	es_commit_horizon_wait();

	/*
	 * The file's bytes are the rows', whatever the caller's session says:
	 * times in ISO and UTC, bytes in hex, text in UTF-8.  One range exports
	 * to one SHA-256, and loads back the same under any settings (a date
	 * written day first read month first).
	 */
	nestlevel = NewGUCNestLevel();
	(void) set_config_option("DateStyle", "ISO, YMD", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("TimeZone", "UTC", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("IntervalStyle", "postgres", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("bytea_output", "hex", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "COPY (SELECT e.* FROM %s.es_events e"
					 " WHERE e.position OPERATOR(pg_catalog.>=) " INT64_FORMAT
					 " AND e.position OPERATOR(pg_catalog.<) " INT64_FORMAT
					 " ORDER BY e.position) TO %s WITH (FORMAT csv, HEADER, ENCODING 'UTF8')",
					 call.store->nspname, from, to, quote_literal_cstr(events_partial));
	if (SPI_execute(sql.data, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not export events to \"%s\"", events_partial);
	nevents = (int64) SPI_processed;
	AtEOXact_GUC(true, nestlevel);

	/* The same rows: the range is settled. */
	args[0] = Int64GetDatum(from);
	args[1] = Int64GetDatum(to);
	if (SPI_execute_plan(es_plan(&range_plan), args, NULL, false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not count the events of the range");
	if (DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) != nevents)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("range [%lld, %lld) changed while it was exported", (long long) from, (long long) to)));
	first = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	last_found = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);

	fsync_fname(events_partial, false);
	es_sha256_file(events_partial, sha, &bytes);
	sha_hex[hex_encode((const char *) sha, ES_HASH_LEN, sha_hex)] = '\0';

	args[0] = CStringGetTextDatum(events_path);
	args[1] = Int64GetDatum(from);
	args[2] = Int64GetDatum(to);
	args[3] = Int64GetDatum(nevents);
	args[4] = first;
	args[5] = last_found;
	args[6] = Int64GetDatum(bytes);
	args[7] = CStringGetTextDatum(sha_hex);
	args[8] = CStringGetTextDatum(psprintf("%s.csv", name));
	args[9] = CStringGetTextDatum(GetUserNameFromId(call.caller, false));
	if (SPI_execute_plan(es_plan(&record_plan), args, nevents > 0 ? NULL : "    nn    ", false, 1) !=
		SPI_OK_INSERT_RETURNING || SPI_processed != 1)
		elog(ERROR, "could not record the export of range [%lld, %lld)", (long long) from, (long long) to);
	manifest = DatumGetJsonbP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));

	export_write_file(manifest_partial,
					  psprintf("%s\n", JsonbToCString(NULL, &manifest->root, VARSIZE(manifest))));
	durable_rename(events_partial, events_path, ERROR);
	durable_rename(manifest_partial, manifest_path, ERROR);

	manifest = DatumGetJsonbP(SPI_datumTransfer(JsonbPGetDatum(manifest), false, -1));
	es_call_end(&call);
	PG_RETURN_JSONB_P(manifest);
}
