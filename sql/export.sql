-- es_export: a range of positions written to a CSV file and a manifest on
-- the server, recorded in es_exports.  The file loads back into a table of
-- es_events' columns with exactly the stored rows; the manifest's SHA-256 is
-- the file's.  Refusals: bad ranges, a range past the last position taken,
-- a relative directory, an existing export, roles without
-- pg_write_server_files, REPEATABLE READ, a transaction that appended.
-- Positions after the random counts of snapshot_property: a round start
-- (a gap in positions, as rolled-back appends leave).
SELECT setval('es_events_position_seq', 1000000) IS NOT NULL AS moved;
SELECT count(*) FROM es_append_batch('Account', 'EXPORT-1', '[
    {"event_type": "ACCOUNT_OPENED", "data": {"currency": "EUR", "note": "a \"quoted\", comma"}},
    {"event_type": "ACCOUNT_BALANCE_UPDATED", "data": {"amount": 100}, "causation_id": "cmd-1"},
    {"event_type": "ACCOUNT_BALANCE_UPDATED", "data": {"amount": 30}, "correlation_id": "req-1"}]', 0);
SELECT min(position) AS from_position, max(position) + 1 AS to_position
  FROM es_events WHERE aggregate_id = 'EXPORT-1' \gset
SELECT current_setting('data_directory') || '/es_export_regress' AS dir \gset

SELECT m - 'exported_at' - 'sha256' - 'bytes' - 'from_position' - 'to_position' - 'first_position' - 'last_position' - 'file' - 'database' AS manifest,
       (m ->> 'first_position')::bigint = :from_position AS first_ok,
       (m ->> 'last_position')::bigint = :to_position - 1 AS last_ok,
       m ->> 'file' = format('es_events_%s_%s.csv', lpad(:'from_position', 19, '0'), lpad(:'to_position', 19, '0')) AS named_by_range
  FROM es_export(:from_position, :to_position, :'dir') AS m;

-- The manifest on disk is the one returned and recorded; the checksum and
-- size are the file's.
SELECT x.events, x.bytes = length(pg_read_binary_file(x.file)) AS size_ok,
       x.sha256 = encode(sha256(pg_read_binary_file(x.file)), 'hex') AS sha256_ok,
       pg_read_file(replace(x.file, '.csv', '.json'))::jsonb = x.manifest AS manifest_file_ok,
       x.exported_by = current_user AS by_ok
  FROM es_exports x;

-- The file loads back: every column, as stored.
CREATE TEMP TABLE loaded (LIKE es_events);
SELECT format('COPY loaded FROM %L WITH (FORMAT csv, HEADER)', file) AS copy_back FROM es_exports \gset
:copy_back;
SELECT count(*) AS loaded,
       (SELECT count(*) FROM (SELECT * FROM loaded EXCEPT SELECT * FROM es_events) d) AS differing
  FROM loaded;

-- The file's bytes do not depend on the session: the same range exported
-- under other date, time zone and bytea settings has the same SHA-256.
SET DateStyle = 'SQL, DMY';
SET TimeZone = 'Asia/Kolkata';
SET bytea_output = 'escape';
SELECT m ->> 'sha256' = (SELECT x.sha256 FROM es_exports x WHERE x.from_position = :from_position) AS same_bytes,
       current_setting('DateStyle') AS datestyle_kept
  FROM es_export(:from_position, :to_position, :'dir' || '_settings') AS m;
RESET DateStyle;
RESET TimeZone;
RESET bytea_output;

-- A range without events (positions skipped or rolled back): a header line,
-- no events.
SELECT nextval('es_events_position_seq') + 1 AS gap_to \gset
SELECT m ->> 'events' AS events, m -> 'first_position' AS first_position
  FROM es_export(:gap_to - 1, :gap_to, :'dir') AS m;

-- A prepared transaction that appended has left the horizon registry, yet
-- may still commit an event into the range: the export waits for it (here
-- until lock_timeout), then has its event.
BEGIN;
SELECT position BETWEEN :to_position AND :to_position + 1 AS in_next_range
  FROM es_append('Account', 'EXPORT-PREPARED', 'ACCOUNT_OPENED', '{"currency": "GBP"}', 0);
PREPARE TRANSACTION 'es_export_prepared';
SET lock_timeout = '200ms';
SELECT es_export(:to_position, :to_position + 2, :'dir');
RESET lock_timeout;
COMMIT PREPARED 'es_export_prepared';
SELECT m ->> 'events' AS events
  FROM es_export(:to_position, :to_position + 2, :'dir') AS m;

-- Refusals (the directory's path, in DETAIL, is the test server's).
\set VERBOSITY terse
SELECT es_export(:from_position, :to_position, :'dir');
\set VERBOSITY default
SELECT es_export(:from_position, :to_position + 1000, :'dir' || '_other');
SELECT es_export(0, 5, :'dir');
SELECT es_export(5, 5, :'dir');
SELECT es_export(1, 5, 'relative/dir');
SELECT es_export(1, NULL, :'dir');
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT es_export(:from_position, :to_position, :'dir' || '_rr');
ROLLBACK;
BEGIN;
SELECT version FROM es_append('Account', 'EXPORT-2', 'ACCOUNT_OPENED', '{"currency": "USD"}', 0);
SELECT es_export(:from_position, :to_position, :'dir' || '_own');
ROLLBACK;
CREATE ROLE es_export_operator;
SELECT es_grant_access('es_export_operator', 'operator');
SET ROLE es_export_operator;
SELECT es_export(:from_position, :to_position, :'dir' || '_operator');
RESET ROLE;
-- With pg_write_server_files, an operator exports; the export says who.
GRANT pg_write_server_files TO es_export_operator;
SET ROLE es_export_operator;
SELECT m ->> 'events' AS events, m ->> 'exported_by' AS exported_by
  FROM es_export(:from_position, :to_position, :'dir' || '_operator') AS m;
RESET ROLE;
DROP OWNED BY es_export_operator;
DROP ROLE es_export_operator;
SELECT count(*) AS exports FROM es_exports;
