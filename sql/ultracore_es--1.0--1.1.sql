/* ultracore_es--1.0--1.1.sql: from release 1.0 to 1.1 */

\echo Use "ALTER EXTENSION ultracore_es UPDATE TO '1.1'" to load this file. \quit

-- Release 1.0 is what users have: ultracore_es--1.0.sql never changes.  A
-- new store is installed as 1.0 and then updated by this script (there is
-- no ultracore_es--1.1.sql), so a fresh 1.1 and an updated 1.0 are the same
-- by construction, and test/t/007_upgrade.pl checks that an update of a
-- store full of data gives exactly that catalog and keeps every event and
-- checkpoint.  Every schema change of 1.1 goes here, with its reason.
--
-- The 1.1 library keeps serving the 1.0 catalog until this script runs:
-- the C functions the 1.0 script names keep their symbols and arguments.

------------------------------------------------------------------------------
-- Delivery that never stalls: a pool of delivery workers per database,
-- handler and projection timeouts, handlers split into segments by
-- aggregate, es_health().
------------------------------------------------------------------------------

-- A handler's (and an async projection's) timeout: a call that runs past it
-- is cancelled and counts as a failed attempt.  parallelism: the segments
-- its events are split into, by aggregate (src/delivery/segment.c).
ALTER TABLE @extschema@.es_handlers
    ADD COLUMN timeout interval CHECK (timeout > '0'),
    ADD COLUMN parallelism integer NOT NULL DEFAULT 1 CHECK (parallelism BETWEEN 1 AND 64);
ALTER TABLE @extschema@.es_projections
    ADD COLUMN timeout interval CHECK (timeout > '0');
COMMENT ON COLUMN @extschema@.es_handlers.timeout IS 'a call running longer is cancelled and counts as a failed attempt (NULL: none)';
COMMENT ON COLUMN @extschema@.es_handlers.parallelism IS 'segments, by aggregate, the handler''s events are delivered in';
COMMENT ON COLUMN @extschema@.es_projections.timeout IS 'async: a call running longer is cancelled and counts as a failed attempt (NULL: none)';

-- The generation of a consumer's segments: each new split starts one.
ALTER TABLE @extschema@.es_consumers ADD COLUMN generation integer NOT NULL DEFAULT 0;
COMMENT ON COLUMN @extschema@.es_consumers.generation IS 'the current split of the consumer into segments (es_consumer_segments)';

-- Where a unit of delivery (a consumer, a segment, the Kafka mirror) is in
-- the commit log (commit_point.c): log_seq NULL, it reads below the commit
-- horizon.  (checkpoint_tx, checkpoint_position) stays a horizon checkpoint
-- in both modes: every event at or below it was handled.  log_skip: events
-- above it handled already (read in the log before falling back), sorted
-- positions, kept until the checkpoint's key passes log_skip_until.
ALTER TABLE @extschema@.es_consumers
    ADD COLUMN log_seq bigint,
    ADD COLUMN log_position bigint,
    ADD COLUMN log_skip bigint[],
    ADD COLUMN log_skip_until xid8;
COMMENT ON COLUMN @extschema@.es_consumers.log_seq IS 'reading the commit log: the seq of the last row read (NULL: reading below the commit horizon)';
COMMENT ON COLUMN @extschema@.es_consumers.log_position IS 'reading the commit log: the position of the last event read in row log_seq';
COMMENT ON COLUMN @extschema@.es_consumers.log_skip IS 'positions above the checkpoint handled already (from the commit log, before falling back to the horizon)';
COMMENT ON COLUMN @extschema@.es_consumers.log_skip_until IS 'the largest key (tx_id) of the log_skip events: dropped once the checkpoint passes it';

-- The segments of split consumers, each with its own checkpoint and retry
-- state; rows of an older generation are fences: the events of their
-- segment up to their checkpoint, and in their skip set, were handled (a
-- fence of one segment is an unsplit consumer's skip set).
CREATE TABLE @extschema@.es_consumer_segments (
    consumer            text COLLATE "C" NOT NULL REFERENCES @extschema@.es_consumers ON DELETE CASCADE,
    generation          integer NOT NULL,
    segments            integer NOT NULL CHECK (segments BETWEEN 1 AND 64),
    segment             integer NOT NULL CHECK (segment >= 0 AND segment < segments),
    checkpoint_tx       xid8 NOT NULL,
    checkpoint_position bigint NOT NULL,
    events_processed    bigint NOT NULL DEFAULT 0,
    last_processed_at   timestamptz,
    retry_event_id      text COLLATE "C",
    retry_attempts      integer NOT NULL DEFAULT 0,
    retry_first_failed_at timestamptz,
    retry_at            timestamptz,
    log_seq             bigint,
    log_position        bigint,
    log_skip            bigint[],
    log_skip_until      xid8,
    PRIMARY KEY (consumer, generation, segment)
);
COMMENT ON TABLE @extschema@.es_consumer_segments IS
    'ultracore_es: the segments of consumers split by aggregate, each with its checkpoint and retry state';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_consumer_segments', '');

CREATE FUNCTION @extschema@.es_segment_of(aggregate_id text, segments integer)
RETURNS integer
AS 'MODULE_PATHNAME', 'es_segment_of' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.es_segment_of(text, integer) IS
    'ultracore_es: the segment (0 .. segments - 1) of an aggregate when a consumer is split into segments';

-- Each consumer's checkpoint: its own, or the lowest of its segments'.
CREATE VIEW @extschema@.es_consumer_checkpoints AS
SELECT c.name AS consumer, coalesce(t.segments, 1) AS segments,
       coalesce(s.checkpoint_tx, c.checkpoint_tx) AS checkpoint_tx,
       coalesce(s.checkpoint_position, c.checkpoint_position) AS checkpoint_position,
       c.events_processed + coalesce(t.events_processed, 0) AS events_processed,
       greatest(c.last_processed_at, t.last_processed_at) AS last_processed_at,
       coalesce(t.retry_event_id, c.retry_event_id) AS retry_event_id,
       coalesce(t.retry_attempts, c.retry_attempts) AS retry_attempts,
       coalesce(t.retry_at, c.retry_at) AS retry_at,
       CASE WHEN t.segments IS NULL THEN c.log_seq ELSE s.log_seq END AS log_seq,
       CASE WHEN t.segments IS NULL THEN c.log_position ELSE s.log_position END AS log_position
  FROM @extschema@.es_consumers c
  LEFT JOIN LATERAL (SELECT g.checkpoint_tx, g.checkpoint_position, g.log_seq, g.log_position
                       FROM @extschema@.es_consumer_segments g
                      WHERE g.consumer OPERATOR(pg_catalog.=) c.name
                        AND g.generation OPERATOR(pg_catalog.=) c.generation
                      ORDER BY g.checkpoint_tx, g.checkpoint_position LIMIT 1) s ON true
  LEFT JOIN LATERAL (SELECT count(*)::integer AS segments, sum(g.events_processed)::bigint AS events_processed,
                            max(g.last_processed_at) AS last_processed_at,
                            (array_agg(g.retry_event_id ORDER BY g.retry_at) FILTER (WHERE g.retry_event_id IS NOT NULL))[1]
                                AS retry_event_id,
                            max(g.retry_attempts) AS retry_attempts, min(g.retry_at) AS retry_at
                       FROM @extschema@.es_consumer_segments g
                      WHERE g.consumer OPERATOR(pg_catalog.=) c.name
                        AND g.generation OPERATOR(pg_catalog.=) c.generation
                     HAVING count(*) > 0) t ON true;
COMMENT ON VIEW @extschema@.es_consumer_checkpoints IS
    'ultracore_es: each consumer''s checkpoint (of a split consumer: its lowest segment''s), events processed and pending retry, and where it is in the commit log (NULL: it reads below the commit horizon)';

CREATE OR REPLACE VIEW @extschema@.es_handler_status AS
SELECT h.name AS handler, h.function, h.event_types, h.max_retries, h.backoff, h.run_as,
       EXISTS (SELECT FROM @extschema@.es_builtin_handlers b WHERE b.name OPERATOR(pg_catalog.=) h.name) AS builtin,
       CASE WHEN c.paused THEN 'paused'
            WHEN k.retry_event_id IS NOT NULL THEN 'retrying'
            ELSE 'running' END AS state,
       k.checkpoint_tx, k.checkpoint_position, k.events_processed, k.last_processed_at,
       k.retry_event_id, k.retry_attempts, k.retry_at, c.last_error, c.last_error_at,
       (SELECT count(*) FROM @extschema@.es_dead_letters d
         WHERE d.consumer OPERATOR(pg_catalog.=) h.name AND d.status IN ('dead', 'retrying')) AS dead_letters,
       (SELECT count(*) FROM @extschema@.es_dead_letters d
         WHERE d.consumer OPERATOR(pg_catalog.=) h.name AND d.status OPERATOR(pg_catalog.=) 'parked') AS parked,
       h.timeout, h.parallelism
  FROM @extschema@.es_handlers h
  JOIN @extschema@.es_consumers c ON c.name OPERATOR(pg_catalog.=) h.name
  JOIN @extschema@.es_consumer_checkpoints k ON k.consumer OPERATOR(pg_catalog.=) h.name
UNION ALL
SELECT b.name, b.function, b.event_types, NULL, NULL, NULL, true, 'off',
       NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 0, NULL, NULL
  FROM @extschema@.es_builtin_handlers b
 WHERE NOT EXISTS (SELECT FROM @extschema@.es_handlers h WHERE h.name OPERATOR(pg_catalog.=) b.name);

-- Registrations with a timeout, and for handlers a parallelism; reads as
-- of a recording time (issue "Trust and privacy").  Release 1.0's functions
-- are replaced (a call with their arguments alone would match both), the
-- EXECUTE grants on them carried over.
DO $$
DECLARE
    f record;
    acl aclitem[];
    g record;
BEGIN
    FOR f IN SELECT * FROM (VALUES
        ('es_register_handler(text, regprocedure, text[], integer, interval, boolean)',
         'es_register_handler(text, regprocedure, text[], integer, interval, boolean, interval, integer)',
         $def$
    CREATE FUNCTION @extschema@.es_register_handler(
        name            text,
        function        regprocedure,
        event_types     text[] DEFAULT NULL,
        max_retries     integer DEFAULT 3,
        backoff         interval DEFAULT '1 second',
        replay_history  boolean DEFAULT false,
        timeout         interval DEFAULT NULL,
        parallelism     integer DEFAULT 1)
    RETURNS void
    AS 'MODULE_PATHNAME', 'es_register_handler' LANGUAGE C VOLATILE PARALLEL UNSAFE
         $def$),
        ('es_register_projection(text, regprocedure, text[], text, regprocedure, integer, interval)',
         'es_register_projection(text, regprocedure, text[], text, regprocedure, integer, interval, interval)',
         $def$
    CREATE FUNCTION @extschema@.es_register_projection(
        name            text,
        function        regprocedure DEFAULT NULL,
        event_types     text[] DEFAULT NULL,
        mode            text DEFAULT 'async',
        reset_function  regprocedure DEFAULT NULL,
        max_retries     integer DEFAULT 3,
        backoff         interval DEFAULT '1 second',
        timeout         interval DEFAULT NULL)
    RETURNS void
    AS 'MODULE_PATHNAME', 'es_register_projection' LANGUAGE C VOLATILE PARALLEL UNSAFE
         $def$),
        ('es_get_events(text, bigint, bigint, timestamptz)',
         'es_get_events(text, bigint, bigint, timestamptz, timestamptz)',
         $def$
    CREATE FUNCTION @extschema@.es_get_events(
        aggregate_id        text,
        from_version        bigint DEFAULT 1,
        to_version          bigint DEFAULT NULL,
        end_timestamp       timestamptz DEFAULT NULL,
        as_of               timestamptz DEFAULT NULL)
    RETURNS SETOF @extschema@.es_events
    AS 'MODULE_PATHNAME', 'es_get_events' LANGUAGE C STABLE PARALLEL RESTRICTED ROWS 100
         $def$),
        ('es_load_aggregate(text, bigint, timestamptz)',
         'es_load_aggregate(text, bigint, timestamptz, timestamptz)',
         $def$
    CREATE FUNCTION @extschema@.es_load_aggregate(
        aggregate_id        text,
        at_version          bigint DEFAULT NULL,
        at_time             timestamptz DEFAULT NULL,
        as_of               timestamptz DEFAULT NULL)
    RETURNS @extschema@.es_aggregate_state
    AS 'MODULE_PATHNAME', 'es_load_aggregate' LANGUAGE C STABLE PARALLEL UNSAFE
         $def$)) AS v(old, new, def)
    LOOP
        SELECT p.proacl INTO acl FROM pg_catalog.pg_proc p
         WHERE p.oid = ('@extschema@.' || f.old)::pg_catalog.regprocedure;
        EXECUTE 'DROP FUNCTION @extschema@.' || f.old;
        EXECUTE f.def;
        EXECUTE 'REVOKE ALL ON FUNCTION @extschema@.' || f.new || ' FROM PUBLIC';
        FOR g IN SELECT a.grantee, a.is_grantable FROM pg_catalog.aclexplode(acl) a
                  WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> a.grantor
        LOOP
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION @extschema@.%s TO %s%s', f.new,
                                      CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE g.grantee::regrole::text END,
                                      CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        END LOOP;
    END LOOP;
END $$;
COMMENT ON FUNCTION @extschema@.es_register_handler(text, regprocedure, text[], integer, interval, boolean, interval, integer) IS
    'ultracore_es: call function(event es_events) for each committed event (of event_types), in commit order, once, with max_retries retries and exponential backoff; from now, or from the first event with replay_history; each call cancelled after timeout; in parallelism segments by aggregate';
COMMENT ON FUNCTION @extschema@.es_register_projection(text, regprocedure, text[], text, regprocedure, integer, interval, interval) IS
    'ultracore_es: project events (of event_types) with function(event es_events), inline in the append''s transaction or async by the worker, from the first event; function NULL switches on a built-in read model; async calls cancelled after timeout';
COMMENT ON FUNCTION @extschema@.es_get_events(text, bigint, bigint, timestamptz, timestamptz) IS
    'ultracore_es: an aggregate''s events in version order, optionally a version range, up to a point in business time (end_timestamp, by occurred_at) or as the store held them at a time (as_of, by recorded_at)';
COMMENT ON FUNCTION @extschema@.es_load_aggregate(text, bigint, timestamptz, timestamptz) IS
    'ultracore_es: an aggregate''s state (latest usable snapshot plus the later events), now, at a version, at a point in business time (at_time) or as the store knew it at a time (as_of)';

-- Resuming a split handler from now moves its segments too.
CREATE OR REPLACE FUNCTION @extschema@.es_resume_handler(name text, from_now boolean DEFAULT false)
RETURNS void
AS 'MODULE_PATHNAME', 'es_resume_handler_1_1' LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- The background processes as es_health sees them.
CREATE FUNCTION @extschema@.es_worker_state(
    OUT kind text,
    OUT member integer,
    OUT pid integer,
    OUT started_at timestamptz,
    OUT busy text,
    OUT busy_since timestamptz,
    OUT last_exit text,
    OUT last_exit_at timestamptz,
    OUT passes bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'es_worker_state' LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION @extschema@.es_worker_state() IS
    'ultracore_es: the launcher, and each background process this database wants (pid NULL: not running), with what it is doing, why the last one in its place ended, and how many loops it has done';

-- Who holds the commit horizon back (horizon.c).
CREATE FUNCTION @extschema@.es_horizon_holders(OUT pid integer, OUT xid xid8)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'es_horizon_holders' LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION @extschema@.es_horizon_holders() IS
    'ultracore_es: the backends holding the commit horizon back, with the transaction id each holds it at: those with events appended in this database and not yet committed (without preloading, or on a standby: every backend with a transaction id); prepared transactions are in pg_prepared_xacts';

-- The commit log (sequencer.c): with wal_level = logical, every committed
-- transaction that appended, numbered in commit order from logical decoding
-- (the extension's output plugin, decoder.c); a transaction left open holds
-- none back.  xid NULL: numbered in a tail, the events committed before the
-- store's slot existed, in commit-horizon order.
CREATE TABLE @extschema@.es_commit_log (
    seq             bigint PRIMARY KEY,
    xid             xid8,
    max_key         xid8 NOT NULL,
    positions       bigint[] NOT NULL,
    commit_lsn      pg_lsn,
    committed_at    timestamptz NOT NULL
);
-- Where a reader of es_read_all continues in the log (es_read_log_start):
-- the first row with an event of a larger commit-order key.
CREATE INDEX es_commit_log_max_key_idx ON @extschema@.es_commit_log (max_key);
COMMENT ON TABLE @extschema@.es_commit_log IS
    'ultracore_es: each committed transaction that appended, numbered in commit order (es_read_log pages it), with the largest commit-order key (tx_id) of its events; xid NULL: numbered in a tail, when the slot was made';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_commit_log', '');

-- The sequencer's state: its slot and the tail numbered when it was made
-- (the snapshot the tail was read with, and its last number).  Not dumped:
-- a restored store makes a slot and a tail of its own.
CREATE TABLE @extschema@.es_commit_log_state (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    slot_name       text,
    tail_snapshot   pg_snapshot,
    tail_seq        bigint,
    tail_events     bigint,
    slot_created_at timestamptz,
    complete_below  xid8,
    complete_seq    bigint
);
COMMENT ON COLUMN @extschema@.es_commit_log_state.complete_below IS
    'every committed event with a smaller key (tx_id) is in the log, in a row up to complete_seq';
INSERT INTO @extschema@.es_commit_log_state DEFAULT VALUES;
REVOKE ALL ON TABLE @extschema@.es_commit_log, @extschema@.es_commit_log_state FROM PUBLIC;

-- How far a reader at a commit-order checkpoint is behind, from the
-- partitions' commit-order indexes (read.c).
CREATE FUNCTION @extschema@.es_lag(after_tx_id xid8, after_position bigint, max_count bigint DEFAULT 1000000,
    OUT events bigint, OUT first_recorded_at timestamptz)
RETURNS record
AS 'MODULE_PATHNAME', 'es_lag' LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION @extschema@.es_lag(xid8, bigint, bigint) IS
    'ultracore_es: the committed events after a commit-order checkpoint (counted up to max_count), and when the first of them was recorded';
REVOKE ALL ON FUNCTION @extschema@.es_lag(xid8, bigint, bigint) FROM PUBLIC;

-- The statistics views read the checkpoints of split consumers too, and
-- where consumers are in the commit log.
CREATE OR REPLACE VIEW @extschema@.es_stats AS
SELECT c.name AS consumer, c.kind, c.paused, s.appended_per_second_last_minute,
       s.appended_per_second_since_start, k.events_processed,
       n.latency_p50_ms, n.latency_p99_ms, n.recent_latency_p50_ms, n.recent_latency_p99_ms,
       -- Below the horizon: the events after the checkpoint; in the commit
       -- log: those numbered after where the consumer is in it.
       CASE WHEN k.log_seq IS NULL
            THEN (SELECT g.events FROM @extschema@.es_lag(k.checkpoint_tx, k.checkpoint_position, 1000000) g)
            ELSE (SELECT count(*) FROM (SELECT FROM @extschema@.es_commit_log l, unnest(l.positions) p
                                         WHERE l.seq OPERATOR(pg_catalog.>=) k.log_seq
                                           AND (l.seq OPERATOR(pg_catalog.>) k.log_seq OR p OPERATOR(pg_catalog.>) k.log_position)
                                         LIMIT 1000000) l) END AS lag_events,
       coalesce(extract(epoch FROM now() OPERATOR(pg_catalog.-)
                CASE WHEN k.log_seq IS NULL
                     THEN (SELECT g.first_recorded_at FROM @extschema@.es_lag(k.checkpoint_tx, k.checkpoint_position, 1) g)
                     ELSE (SELECT l.committed_at FROM @extschema@.es_commit_log l
                            WHERE l.seq OPERATOR(pg_catalog.>=) k.log_seq
                              AND (l.seq OPERATOR(pg_catalog.>) k.log_seq
                                   OR EXISTS (SELECT FROM unnest(l.positions) p WHERE p OPERATOR(pg_catalog.>) k.log_position))
                            ORDER BY l.seq LIMIT 1) END), 0)::numeric(12, 3) AS lag_seconds,
       (SELECT count(*) FROM @extschema@.es_dead_letters d
         WHERE d.consumer OPERATOR(pg_catalog.=) c.name AND d.status OPERATOR(pg_catalog.<>) 'resolved') AS dead_letters,
       k.checkpoint_tx, k.checkpoint_position, k.last_processed_at, c.last_error, c.last_error_at
  FROM @extschema@.es_consumers c
  JOIN @extschema@.es_consumer_checkpoints k ON k.consumer OPERATOR(pg_catalog.=) c.name
  CROSS JOIN @extschema@.es_store_stats s
  LEFT JOIN @extschema@.es_consumer_counters() n ON n.consumer OPERATOR(pg_catalog.=) c.name
 -- The Kafka ingest reads topics, not the store: es_kafka_status shows it.
 WHERE c.name OPERATOR(pg_catalog.<>) 'kafka_ingest';

CREATE FUNCTION @extschema@.es_read_log(
    after_seq       bigint DEFAULT 0,
    after_position  bigint DEFAULT 0,
    max_count       integer DEFAULT 1000)
RETURNS TABLE (
    seq             bigint,
    event_id        text,
    event_type      text,
    aggregate_type  text,
    aggregate_id    text,
    version         bigint,
    "position"      bigint,
    tx_id           xid8,
    occurred_at     timestamptz,
    recorded_at     timestamptz,
    causation_id    text,
    correlation_id  text,
    data            jsonb,
    metadata        jsonb,
    schema_version  integer,
    appended_by     text,
    hash            bytea)
AS 'MODULE_PATHNAME', 'es_read_log' LANGUAGE C STABLE PARALLEL RESTRICTED ROWS 1000;
COMMENT ON FUNCTION @extschema@.es_read_log(bigint, bigint, integer) IS
    'ultracore_es: up to max_count events after (after_seq, after_position), in commit order: the transactions of es_commit_log by seq, each one''s events in position order; the last row''s (seq, position) is the next checkpoint';
REVOKE ALL ON FUNCTION @extschema@.es_read_log(bigint, bigint, integer) FROM PUBLIC;

CREATE FUNCTION @extschema@.es_read_log_start(after_tx xid8)
RETURNS bigint
AS 'MODULE_PATHNAME', 'es_read_log_start' LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION @extschema@.es_read_log_start(xid8) IS
    'ultracore_es: where a reader of es_read_all at the checkpoint (after_tx, after_position) goes on with es_read_log: es_read_log(es_read_log_start(after_tx), 0, ...), skipping the rows at or below that checkpoint';
REVOKE ALL ON FUNCTION @extschema@.es_read_log_start(xid8) FROM PUBLIC;

-- What an operator (or a probe) asks first: is delivery healthy?  One row
-- per component, 'ok', 'warning' or 'critical'; the warning levels are
-- settings (ultracore_es.health_*), ten times each is critical.  Every
-- figure is measured now against the store (a dead worker shows as lag
-- growing and as a worker not running, never as an old reading); ages are
-- taken by the clock, not the transaction's start, so a probe that loops
-- in one transaction sees them grow.
CREATE FUNCTION @extschema@.es_health(
    OUT component text,
    OUT status text,
    OUT detail text,
    OUT since timestamptz)
RETURNS SETOF record
-- A probe runs it every few seconds: its plan, costed over every partition
-- of es_events, would pass jit_above_cost, and compiling it took longer
-- than running it.
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off AS $$
WITH workers AS (
    SELECT w.* FROM @extschema@.es_worker_state() w
), t AS (
    SELECT current_setting('ultracore_es.health_lag_seconds', true)::interval AS lag_seconds,
           current_setting('ultracore_es.health_lag_events', true)::bigint AS lag_events,
           current_setting('ultracore_es.health_batch_seconds', true)::interval AS batch_seconds,
           current_setting('ultracore_es.health_horizon_seconds', true)::interval AS horizon_seconds,
           current_setting('ultracore_es.health_dead_letters', true)::bigint AS dead_letters,
           EXISTS (SELECT FROM workers WHERE kind = 'delivery' AND pid IS NOT NULL) AS delivering
), horizon AS (
    SELECT 'transaction ' || h.xid || ' of pid ' || h.pid || ' (' || coalesce(a.usename::text, a.backend_type)
           || ', database ' || coalesce(a.datname::text, '-') || ', ' || a.state || ')' AS what,
           a.xact_start AS since
      FROM @extschema@.es_horizon_holders() h
      JOIN pg_stat_activity a ON a.pid = h.pid
     WHERE a.xact_start IS NOT NULL
    UNION ALL
    SELECT 'prepared transaction ' || p.transaction || ' (' || p.gid || ')', p.prepared
      FROM pg_prepared_xacts p
     WHERE p.database = current_database()
     ORDER BY since LIMIT 1
), consumers AS (
    SELECT s.consumer, s.kind, s.paused, s.lag_events, s.lag_seconds, s.events_processed, s.last_processed_at,
           s.last_error, s.last_error_at, k.retry_event_id, k.retry_attempts, k.retry_at, k.segments
      FROM @extschema@.es_stats s
      JOIN @extschema@.es_consumer_checkpoints k ON k.consumer = s.consumer
     WHERE s.kind <> 'kafka'
)
SELECT 'launcher',
       CASE WHEN w.pid IS NULL THEN 'critical' ELSE 'ok' END,
       CASE WHEN w.pid IS NULL AND NOT EXISTS (SELECT FROM workers WHERE kind <> 'launcher')
                 AND current_setting('ultracore_es.delivery_workers', true) IS NULL
            THEN 'not running: ultracore_es is not in shared_preload_libraries'
            WHEN w.pid IS NULL THEN 'not running'
            ELSE 'pid ' || w.pid END,
       w.started_at
  FROM (SELECT * FROM workers WHERE kind = 'launcher'
        UNION ALL SELECT 'launcher', 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL
         WHERE NOT EXISTS (SELECT FROM workers WHERE kind = 'launcher')) w
UNION ALL
SELECT 'worker ' || w.kind || ' ' || w.member,
       CASE WHEN w.pid IS NULL THEN 'critical'
            WHEN w.busy_since < clock_timestamp() - 10 * t.batch_seconds THEN 'critical'
            WHEN w.busy_since < clock_timestamp() - t.batch_seconds THEN 'warning'
            ELSE 'ok' END,
       CASE WHEN w.pid IS NULL THEN 'not running' || coalesce(': last one ' || w.last_exit, '')
            WHEN w.busy <> '' THEN 'pid ' || w.pid || ', ' || w.busy || ' for '
                                   || date_trunc('second', clock_timestamp() - w.busy_since)
            ELSE 'pid ' || w.pid || ', idle' END,
       CASE WHEN w.pid IS NULL THEN w.last_exit_at WHEN w.busy <> '' THEN w.busy_since ELSE w.started_at END
  FROM workers w, t
 WHERE w.kind <> 'launcher'
UNION ALL
SELECT CASE c.kind WHEN 'handler' THEN 'handler ' ELSE 'projection ' END || c.consumer,
       CASE WHEN NOT t.delivering THEN 'critical'
            WHEN c.lag_seconds * interval '1 second' >= 10 * t.lag_seconds OR c.lag_events >= 10 * t.lag_events
                 THEN 'critical'
            WHEN c.lag_seconds * interval '1 second' >= t.lag_seconds OR c.lag_events >= t.lag_events
                 OR c.paused OR c.retry_event_id IS NOT NULL THEN 'warning'
            ELSE 'ok' END,
       concat_ws('; ',
                 CASE WHEN NOT t.delivering THEN 'no delivery worker is running' END,
                 CASE WHEN c.paused THEN 'paused' END,
                 'lag ' || c.lag_events || ' events, ' || c.lag_seconds || ' s',
                 CASE WHEN c.retry_event_id IS NOT NULL
                      THEN 'retrying event ' || c.retry_event_id || ' (attempt ' || c.retry_attempts + 1
                           || ' at ' || c.retry_at || ')' END,
                 CASE WHEN c.segments > 1 THEN c.segments || ' segments' END,
                 CASE WHEN c.last_error_at > clock_timestamp() - t.lag_seconds THEN 'last error: ' || c.last_error END),
       CASE WHEN c.lag_events > 0 THEN clock_timestamp() - c.lag_seconds * interval '1 second' ELSE c.last_processed_at END
  FROM consumers c, t
UNION ALL
SELECT 'dead letters',
       CASE WHEN d.n >= t.dead_letters THEN 'critical' WHEN d.n > 0 THEN 'warning' ELSE 'ok' END,
       d.n || ' unresolved' || coalesce(', the latest of ' || d.latest_consumer || ' at ' || d.latest, ''),
       d.oldest
  FROM t, (SELECT count(*) AS n, min(first_failed_at) AS oldest, max(last_failed_at) AS latest,
                  (array_agg(consumer ORDER BY last_failed_at DESC))[1] AS latest_consumer
             FROM @extschema@.es_dead_letters WHERE status <> 'resolved') d
UNION ALL
SELECT 'commit horizon',
       CASE WHEN h.since < clock_timestamp() - 10 * t.horizon_seconds THEN 'critical'
            WHEN h.since < clock_timestamp() - t.horizon_seconds THEN 'warning'
            ELSE 'ok' END,
       coalesce('oldest: ' || h.what || ', open for ' || date_trunc('second', clock_timestamp() - h.since),
                'no transaction holds it back'),
       h.since
  FROM t LEFT JOIN horizon h ON true
UNION ALL
SELECT 'commit log',
       CASE WHEN c.mode <> 'logical' OR c.standby THEN 'ok'
            WHEN NOT EXISTS (SELECT FROM workers WHERE kind = 'sequencer' AND pid IS NOT NULL) THEN 'critical'
            WHEN sl.slot_name IS NULL OR sl.wal_status = 'lost' THEN 'warning'
            ELSE 'ok' END,
       CASE WHEN c.mode = 'off' THEN 'off (ultracore_es.commit_log): es_read_log returns nothing new'
            WHEN c.mode = 'horizon' THEN 'none: wal_level is ' || current_setting('wal_level')
                                         || ', es_read_log returns nothing new'
            WHEN c.standby THEN 'standby: the primary''s, replicated; a promotion numbers its tail once'
            WHEN sl.slot_name IS NULL THEN 'slot ' || c.slot || ' is missing: making it, then numbering the tail'
            WHEN sl.wal_status = 'lost' THEN 'slot ' || c.slot || ' was invalidated: making it again, then numbering the tail'
            ELSE 'logical decoding: slot ' || c.slot || ', up to seq ' || coalesce(l.seq, 0) || ', the slot keeps '
                 || pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), sl.restart_lsn)) || ' of WAL'
                 || CASE WHEN st.tail_events > 0 AND st.slot_created_at > clock_timestamp() - interval '1 day'
                         THEN '; the slot was made at ' || date_trunc('second', st.slot_created_at)
                              || ', numbering ' || st.tail_events || ' events committed without it as its tail'
                         ELSE '' END
                 || '; ' || u.in_log || ' of ' || u.units || ' delivery units read it'
                 || CASE WHEN u.in_log < u.units THEN ' (the others switch at their next batch)' ELSE '' END END,
       coalesce(l.committed_at, st.slot_created_at)
  FROM (SELECT CASE WHEN NOT coalesce(current_setting('ultracore_es.commit_log', true)::boolean, false) THEN 'off'
                    WHEN current_setting('wal_level') = 'logical' THEN 'logical' ELSE 'horizon' END AS mode,
               pg_is_in_recovery() AS standby,
               'ultracore_es_' || (SELECT d.oid FROM pg_database d WHERE d.datname = current_database()) AS slot) c
  CROSS JOIN @extschema@.es_commit_log_state st
  LEFT JOIN pg_replication_slots sl ON sl.slot_name = c.slot
  LEFT JOIN LATERAL (SELECT g.seq, g.committed_at FROM @extschema@.es_commit_log g ORDER BY g.seq DESC LIMIT 1) l ON true
  -- The units of delivery: unsplit consumers and the mirror, and the segments of the others.
  CROSS JOIN (SELECT count(*) FILTER (WHERE x.log_seq IS NOT NULL) AS in_log, count(*) AS units
                FROM (SELECT o.log_seq FROM @extschema@.es_consumers o
                       WHERE o.name <> 'kafka_ingest'
                         AND NOT EXISTS (SELECT FROM @extschema@.es_consumer_segments g
                                          WHERE g.consumer = o.name AND g.generation = o.generation)
                      UNION ALL
                      SELECT g.log_seq FROM @extschema@.es_consumer_segments g
                        JOIN @extschema@.es_consumers o ON o.name = g.consumer AND o.generation = g.generation) x) u
UNION ALL
SELECT 'kafka mirror',
       CASE WHEN NOT EXISTS (SELECT FROM workers WHERE kind = 'kafka mirror' AND pid IS NOT NULL) THEN 'critical'
            WHEN k.lag_seconds * interval '1 second' >= 10 * t.lag_seconds OR k.lag_events >= 10 * t.lag_events
                 THEN 'critical'
            WHEN k.lag_seconds * interval '1 second' >= t.lag_seconds OR k.lag_events >= t.lag_events
                 OR k.last_error_at > clock_timestamp() - t.lag_seconds OR k.dead_letters > 0 THEN 'warning'
            ELSE 'ok' END,
       concat_ws('; ', 'lag ' || coalesce(k.lag_events, 0) || ' events, ' || coalesce(k.lag_seconds, 0) || ' s',
                 CASE WHEN k.dead_letters > 0
                      THEN k.dead_letters || ' events refused by Kafka, parked in es_kafka_mirror_dead_letters' END,
                 CASE WHEN k.last_error_at > clock_timestamp() - t.lag_seconds THEN 'last error: ' || k.last_error END),
       coalesce(k.last_acknowledged_at, k.last_error_at)
  FROM t, @extschema@.es_kafka_status k
 WHERE k.component = 'mirror' AND EXISTS (SELECT FROM workers WHERE kind = 'kafka mirror')
UNION ALL
SELECT 'kafka ingest',
       CASE WHEN NOT EXISTS (SELECT FROM workers WHERE kind = 'kafka ingest' AND pid IS NOT NULL) THEN 'critical'
            WHEN i.lag >= 10 * t.lag_events THEN 'critical'
            WHEN i.lag >= t.lag_events OR i.last_error_at > clock_timestamp() - t.lag_seconds THEN 'warning'
            ELSE 'ok' END,
       concat_ws('; ', 'lag ' || i.lag || ' messages over ' || i.partitions || ' partitions',
                 i.dead_letters || ' dead letters',
                 CASE WHEN i.last_error_at > clock_timestamp() - t.lag_seconds THEN 'last error: ' || i.last_error END),
       i.updated
  FROM t, (SELECT coalesce(sum(consumer_lag), 0) AS lag, count(*) AS partitions, max(last_acknowledged_at) AS updated,
                  coalesce(sum(dead_letters), 0) AS dead_letters, max(last_error) AS last_error,
                  max(last_error_at) AS last_error_at
             FROM @extschema@.es_kafka_status WHERE component = 'ingest') i
 WHERE EXISTS (SELECT FROM workers WHERE kind = 'kafka ingest')
UNION ALL
-- The store's triggers as made: ENABLE ALWAYS.  A data-only pg_restore
-- --disable-triggers leaves them ENABLE, which a session_replication_role
-- = replica session (a logical replication worker) does not fire.
SELECT 'triggers',
       CASE WHEN x.refusal_off > 0 THEN 'critical' WHEN y.not_always <> '' THEN 'warning' ELSE 'ok' END,
       CASE WHEN x.refusal_off = 0 AND y.not_always = ''
            THEN y.triggers || ' triggers of the store, es_events_append_only on es_events and its '
                 || x.tables - 1 || ' partitions among them: ENABLE ALWAYS'
            ELSE concat_ws('; ',
                     CASE WHEN x.refusal_off > 0
                          THEN 'es_events_append_only disabled or missing on ' || x.refusal_off || ' of '
                               || x.tables || ' tables (es_events and its partitions): events can be updated and deleted' END,
                     CASE WHEN y.not_always <> ''
                          THEN 'not ENABLE ALWAYS: ' || y.not_always || ' (a session with session_replication_role'
                               || ' = replica fires none of them: es_events_append_only lets it update and delete events,'
                               || ' the catalogs'' triggers let it change them unseen by the caches,'
                               || ' es_events_overflow_filling makes every read look in es_events_overflow)' END)
                 || '; ALTER TABLE ... ENABLE ALWAYS TRIGGER ...' END,
       NULL::timestamptz
  FROM (SELECT count(*) AS tables,
               count(*) FILTER (WHERE r.tgenabled IS NULL OR r.tgenabled = 'D') AS refusal_off
          FROM (SELECT '@extschema@.es_events'::regclass::oid AS relid
                UNION ALL
                SELECT i.inhrelid FROM pg_inherits i WHERE i.inhparent = '@extschema@.es_events'::regclass) e
          LEFT JOIN pg_trigger r ON r.tgrelid = e.relid AND r.tgname = 'es_events_append_only') x,
       -- Every trigger the store made: on its tables and on es_events' partitions.
       (SELECT count(*) AS triggers,
               coalesce(string_agg(DISTINCT g.tgname, ', ' ORDER BY g.tgname) FILTER (WHERE g.tgenabled <> 'A'), '')
                   AS not_always
          FROM pg_trigger g
         WHERE NOT g.tgisinternal AND g.tgname LIKE 'es\_%'
           AND g.tgrelid IN (SELECT d.objid FROM pg_depend d JOIN pg_extension n ON n.oid = d.refobjid
                              WHERE n.extname = 'ultracore_es' AND d.refclassid = 'pg_extension'::regclass
                                AND d.classid = 'pg_class'::regclass AND d.deptype = 'e'
                             UNION
                             SELECT i.inhrelid FROM pg_inherits i
                              WHERE i.inhparent = '@extschema@.es_events'::regclass)) y
$$;
COMMENT ON FUNCTION @extschema@.es_health() IS
    'ultracore_es: the health of delivery: launcher and workers, each consumer''s lag and retries, dead letters, the commit horizon, Kafka, the store''s triggers; ok, warning or critical';

REVOKE ALL ON TABLE @extschema@.es_consumer_segments, @extschema@.es_consumer_checkpoints FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.es_segment_of(text, integer), @extschema@.es_worker_state(),
    @extschema@.es_horizon_holders(), @extschema@.es_health() FROM PUBLIC;

-- The key is now a transaction id taken at the first append (horizon.c).
COMMENT ON COLUMN @extschema@.es_events.tx_id IS 'commit-order key: a transaction id of the appending transaction, assigned at its first append (its own, or a subtransaction''s when it had one already), offset after a restore into another cluster, raised to the previous event''s key of the aggregate; commit order is (tx_id, position)';

-- Under READ COMMITTED, es_read_all and es_commit_horizon read the commit
-- horizon now (only transactions that appended events hold it back) with
-- a snapshot taken after it, not the calling statement's: two calls in one
-- statement may differ.
ALTER FUNCTION @extschema@.es_read_all(xid8, bigint, text, text[], integer) VOLATILE;
ALTER FUNCTION @extschema@.es_commit_horizon() VOLATILE;

-- The checkpoint's tx_id from drivers that have no xid8 (an integer literal
-- has no cast to it): the same reader, the checkpoint as bigint or text,
-- with no default (es_read_all() stays the xid8 one), and the grants of the
-- xid8 one.
CREATE FUNCTION @extschema@.es_read_all(
    after_tx_id         bigint,
    after_position      bigint DEFAULT 0,
    aggregate_type      text DEFAULT NULL,
    event_types         text[] DEFAULT NULL,
    max_count           integer DEFAULT 1000)
RETURNS SETOF @extschema@.es_events
AS 'MODULE_PATHNAME', 'es_read_all_bigint' LANGUAGE C VOLATILE PARALLEL RESTRICTED ROWS 1000;
COMMENT ON FUNCTION @extschema@.es_read_all(bigint, bigint, text, text[], integer) IS
    'ultracore_es: es_read_all with the checkpoint''s tx_id as bigint, for drivers without xid8';
CREATE FUNCTION @extschema@.es_read_all(
    after_tx_id         text,
    after_position      bigint DEFAULT 0,
    aggregate_type      text DEFAULT NULL,
    event_types         text[] DEFAULT NULL,
    max_count           integer DEFAULT 1000)
RETURNS SETOF @extschema@.es_events
AS 'MODULE_PATHNAME', 'es_read_all_text' LANGUAGE C VOLATILE PARALLEL RESTRICTED ROWS 1000;
COMMENT ON FUNCTION @extschema@.es_read_all(text, bigint, text, text[], integer) IS
    'ultracore_es: es_read_all with the checkpoint''s tx_id as text, for drivers without xid8';
REVOKE ALL ON FUNCTION @extschema@.es_read_all(bigint, bigint, text, text[], integer),
    @extschema@.es_read_all(text, bigint, text, text[], integer) FROM PUBLIC;
DO $$
DECLARE
    g record;
    f text;
BEGIN
    FOR g IN SELECT a.grantee, a.is_grantable
               FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
              WHERE p.oid = '@extschema@.es_read_all(xid8, bigint, text, text[], integer)'::pg_catalog.regprocedure
                AND a.privilege_type = 'EXECUTE' AND a.grantee <> a.grantor
    LOOP
        -- The other signatures, and the commit log: whoever reads es_read_all under 1.0 reads them too.
        FOREACH f IN ARRAY ARRAY['es_read_all(bigint, bigint, text, text[], integer)',
                                 'es_read_all(text, bigint, text, text[], integer)',
                                 'es_read_log(bigint, bigint, integer)',
                                 'es_read_log_start(xid8)'] LOOP
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION @extschema@.%s TO %s%s', f,
                                      CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE g.grantee::regrole::text END,
                                      CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        END LOOP;
    END LOOP;
END $$;

-- Counting from now, as pg_stat_statements_reset() does.
CREATE FUNCTION @extschema@.es_reset_consumer_counters(consumer text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'es_reset_consumer_counters' LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION @extschema@.es_reset_consumer_counters(text) IS
    'ultracore_es: start a consumer''s (NULL: every consumer''s) shared-memory counters and latency histograms again; returns how many';
REVOKE ALL ON FUNCTION @extschema@.es_reset_consumer_counters(text) FROM PUBLIC;

-- The idempotency ledger is pruned in short batches, oldest first, by this
-- index (delivery.c), instead of one DELETE over the whole table a minute.
CREATE INDEX es_handled_handled_at ON @extschema@.es_handled (handled_at);

-- Events Kafka refused for good (too large, a topic that does not exist or
-- that the mirror may not write): parked by the checkpoint that passes
-- them, so that the rest of the stream goes on (mirror.c).
CREATE TABLE @extschema@.es_kafka_mirror_dead_letters (
    position        bigint PRIMARY KEY,
    event_id        text COLLATE "C" NOT NULL,
    aggregate_type  text NOT NULL,
    aggregate_id    text COLLATE "C" NOT NULL,
    topic           text NOT NULL,
    error           text NOT NULL,
    parked_at       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE @extschema@.es_kafka_mirror_dead_letters IS
    'ultracore_es: events the Kafka mirror could not send because Kafka refused them for good, with the topic and the error; the mirror went on past them';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_kafka_mirror_dead_letters', '');
REVOKE ALL ON TABLE @extschema@.es_kafka_mirror_dead_letters FROM PUBLIC;

CREATE OR REPLACE VIEW @extschema@.es_kafka_status AS
SELECT 'mirror'::text AS component, NULL::text AS group_id, NULL::text AS topic, NULL::integer AS partition,
       c.checkpoint_tx, c.checkpoint_position, s.lag_events, s.lag_seconds,
       c.events_processed AS events, c.last_processed_at AS last_acknowledged_at,
       s.latency_p50_ms, s.latency_p99_ms,
       NULL::bigint AS next_offset, NULL::bigint AS high_watermark, NULL::bigint AS consumer_lag,
       (SELECT count(*) FROM @extschema@.es_kafka_mirror_dead_letters) AS dead_letters, c.last_error, c.last_error_at
  FROM @extschema@.es_consumers c
  LEFT JOIN @extschema@.es_stats s ON s.consumer OPERATOR(pg_catalog.=) c.name
 WHERE c.name OPERATOR(pg_catalog.=) 'kafka_mirror'
UNION ALL
SELECT 'ingest', o.group_id, o.topic, o.partition, NULL, NULL, NULL, NULL, NULL, o.updated_at, NULL, NULL,
       o.next_offset, o.high_watermark,
       greatest(o.high_watermark OPERATOR(pg_catalog.-) coalesce(o.next_offset, 0), 0),
       (SELECT count(*) FROM @extschema@.es_kafka_dead_letters d
         WHERE d.topic OPERATOR(pg_catalog.=) o.topic AND d.partition OPERATOR(pg_catalog.=) o.partition),
       c.last_error, c.last_error_at
  FROM @extschema@.es_kafka_offsets o
  LEFT JOIN @extschema@.es_consumers c ON c.name OPERATOR(pg_catalog.=) 'kafka_ingest';
COMMENT ON VIEW @extschema@.es_kafka_status IS
    'ultracore_es: the Kafka mirror (checkpoint, lag, last acknowledgement, commit-to-acknowledgement latency, events parked as refused by Kafka, last error) and, per ingested partition, the next offset, the brokers'' high watermark, the consumer lag and the dead letters';

-- The sequences of serial columns keep PUBLIC out too, also in a database
-- whose default privileges would let it in (1.0 revoked only the position's).
REVOKE ALL ON SEQUENCE @extschema@.es_dead_letters_id_seq, @extschema@.es_kafka_dead_letters_id_seq,
    @extschema@.es_notification_outbox_id_seq, @extschema@.es_projections_id_seq FROM PUBLIC;

-- es_save_snapshot now saves a given state only when it is the fold of the
-- events.  Under 1.0 a state saved by hand was taken as given, unchecked
-- (and which ones were given is not recorded): every snapshot saved by hand
-- stops serving loads (its fingerprint no longer matches) until
-- es_rebuild_snapshots folds it again from the events.
UPDATE @extschema@.es_snapshots SET fingerprint = fingerprint || ' (saved by hand under 1.0, unchecked)'
 WHERE NOT automatic;

-- Access in one call: the privileges of each kind of role, as the README
-- lists them ("Privileges").  The lists are here, in one place; the grants
-- are plain GRANTs, visible in the catalog, and as idempotent.
CREATE FUNCTION @extschema@.es_access_privileges(access text,
    OUT kind text, OUT object text)
RETURNS SETOF record
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p.kind, '@extschema@.' || p.object
      FROM (VALUES
        ('reader', 'function', 'es_get_events(text, bigint, bigint, timestamptz, timestamptz)'),
        ('reader', 'function', 'es_read_all(xid8, bigint, text, text[], integer)'),
        ('reader', 'function', 'es_read_all(bigint, bigint, text, text[], integer)'),
        ('reader', 'function', 'es_read_all(text, bigint, text, text[], integer)'),
        ('reader', 'function', 'es_commit_horizon()'),
        ('reader', 'function', 'es_read_log(bigint, bigint, integer)'),
        ('reader', 'function', 'es_read_log_start(xid8)'),
        ('reader', 'function', 'es_aggregate_version(text)'),
        ('reader', 'function', 'es_load_aggregate(text, bigint, timestamptz, timestamptz)'),
        ('reader', 'function', 'es_causation_chain(text)'),
        ('reader', 'function', 'es_correlated_events(text)'),
        ('reader', 'function', 'es_event_position(text)'),
        ('reader', 'function', 'es_get_snapshot(text, bigint, boolean)'),
        ('reader', 'function', 'es_list_snapshots(text, text)'),
        ('reader', 'function', 'es_wait_for_projection(text, bigint, interval)'),
        ('reader', 'function', 'es_reveal(text)'),
        ('reader', 'function', 'es_reveal(jsonb)'),
        ('reader', 'table', 'es_aggregate_versions'),
        ('reader', 'table', 'es_customers'),
        ('reader', 'table', 'es_accounts'),
        ('reader', 'table', 'es_transactions'),
        ('reader', 'table', 'es_payments'),
        ('reader', 'table', 'es_loans'),
        ('writer', 'function', 'es_append(text, text, text, jsonb, bigint, jsonb, text, text, text, timestamptz)'),
        ('writer', 'function', 'es_append_batch(text, text, jsonb, bigint, jsonb, text, text)'),
        ('operator', 'function', 'es_health()'),
        ('operator', 'function', 'es_lag(xid8, bigint, bigint)'),
        ('operator', 'function', 'es_worker_state()'),
        ('operator', 'function', 'es_horizon_holders()'),
        ('operator', 'function', 'es_store_counters()'),
        ('operator', 'function', 'es_consumer_counters()'),
        ('operator', 'function', 'es_pause_handler(text)'),
        ('operator', 'function', 'es_resume_handler(text, boolean)'),
        ('operator', 'function', 'es_retry_dead_letter(bigint)'),
        ('operator', 'function', 'es_retry_dead_letters(text)'),
        ('operator', 'function', 'es_reset_consumer_counters(text)'),
        ('operator', 'function', 'es_rebuild_projection(text, text)'),
        ('operator', 'function', 'es_rebuild_snapshots(text, text)'),
        ('operator', 'function', 'es_digest()'),
        ('operator', 'function', 'es_verify(text, jsonb)'),
        ('operator', 'function', 'es_export(bigint, bigint, text)'),
        ('operator', 'table', 'es_stats'),
        ('operator', 'table', 'es_store_stats'),
        ('operator', 'table', 'es_handler_status'),
        ('operator', 'table', 'es_projection_status'),
        ('operator', 'table', 'es_consumer_checkpoints'),
        ('operator', 'table', 'es_dead_letter_queue'),
        ('operator', 'function', 'es_event_position(text)'),
        ('operator', 'function', 'es_make_partitions(bigint)'),
        ('operator', 'function', 'es_archive(bigint)'),
        ('operator', 'function', 'es_drop_history(bigint)'),
        ('operator', 'table', 'es_dropped_history'),
        ('operator', 'table', 'es_partitions'),
        ('operator', 'table', 'es_kafka_status'),
        ('operator', 'table', 'es_snapshot_list'),
        ('operator', 'table', 'es_exports')) AS p(access, kind, object)
     WHERE p.access = $1
        OR ($1 = 'writer' AND p.access = 'reader')
$$;
COMMENT ON FUNCTION @extschema@.es_access_privileges(text) IS
    'ultracore_es: what es_grant_access gives for an access (reader, writer: a reader that also appends, operator): functions to execute, views to select';

CREATE FUNCTION @extschema@.es_change_access(role regrole, access text, give boolean)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p record;
BEGIN
    IF access IS NULL OR access NOT IN ('reader', 'writer', 'operator') THEN
        RAISE EXCEPTION 'unknown access "%"', access USING ERRCODE = '22023',
            HINT = 'Access is reader, writer (a reader that also appends) or operator (monitoring and delivery''s operations).';
    END IF;
    IF role IS NULL OR give IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', CASE WHEN role IS NULL THEN 'role' ELSE 'give' END USING ERRCODE = '22004';
    END IF;
    IF NOT pg_has_role((SELECT e.extowner FROM pg_extension e WHERE e.extname = 'ultracore_es'), 'USAGE') THEN
        RAISE EXCEPTION 'permission denied to change access to the event store' USING ERRCODE = '42501',
            DETAIL = 'Only the owner of extension ultracore_es (or a superuser) grants and revokes its privileges.';
    END IF;
    IF give THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %s TO %s', '@extschema@', role);
    END IF;
    -- Revoking writer takes back the appends; the reads go with reader.
    FOR p IN SELECT * FROM @extschema@.es_access_privileges(access) a
              WHERE give OR access <> 'writer'
                 OR a.object NOT IN (SELECT r.object FROM @extschema@.es_access_privileges('reader') r) LOOP
        EXECUTE format(CASE WHEN give THEN 'GRANT %s ON %s %s TO %s' ELSE 'REVOKE %s ON %s %s FROM %s' END,
                       CASE p.kind WHEN 'function' THEN 'EXECUTE' ELSE 'SELECT' END, upper(p.kind), p.object, role);
    END LOOP;
END $$;
COMMENT ON FUNCTION @extschema@.es_change_access(regrole, text, boolean) IS
    'ultracore_es: what es_grant_access (give) and es_revoke_access do';

CREATE FUNCTION @extschema@.es_grant_access(role regrole, access text)
RETURNS void
LANGUAGE sql VOLATILE
AS $$ SELECT @extschema@.es_change_access(role, access, true) $$;
COMMENT ON FUNCTION @extschema@.es_grant_access(regrole, text) IS
    'ultracore_es: grant a role reader, writer or operator access (es_access_privileges lists what each gives), and USAGE on the extension''s schema; idempotent';

CREATE FUNCTION @extschema@.es_revoke_access(role regrole, access text)
RETURNS void
LANGUAGE sql VOLATILE
AS $$ SELECT @extschema@.es_change_access(role, access, false) $$;
COMMENT ON FUNCTION @extschema@.es_revoke_access(regrole, text) IS
    'ultracore_es: revoke what es_grant_access gave for that access (for writer: the appends; schema USAGE stays); idempotent';
REVOKE ALL ON FUNCTION @extschema@.es_access_privileges(text), @extschema@.es_change_access(regrole, text, boolean),
    @extschema@.es_grant_access(regrole, text), @extschema@.es_revoke_access(regrole, text) FROM PUBLIC;

-- Monitoring: pg_monitor reads the health, the statistics and the workers,
-- as it reads PostgreSQL's own (and so does a Prometheus exporter's role).
GRANT USAGE ON SCHEMA @extschema@ TO pg_monitor;
GRANT SELECT ON @extschema@.es_stats, @extschema@.es_store_stats, @extschema@.es_handler_status,
    @extschema@.es_projection_status, @extschema@.es_consumer_checkpoints, @extschema@.es_kafka_status TO pg_monitor;
GRANT EXECUTE ON FUNCTION @extschema@.es_health(), @extschema@.es_worker_state(), @extschema@.es_horizon_holders(),
    @extschema@.es_store_counters(), @extschema@.es_consumer_counters(), @extschema@.es_lag(xid8, bigint, bigint) TO pg_monitor;

------------------------------------------------------------------------------
-- Tamper evidence (src/core/event_hash.c, src/read/ledger.c): every event
-- carries a hash of its content chained to its aggregate's previous event;
-- ledger blocks chain all hashes in commit order; es_digest() seals and
-- returns a digest to keep outside the database; es_verify() finds what no
-- longer adds up.
------------------------------------------------------------------------------

-- Added without a default: no rewrite of the stored events, which keep a
-- NULL hash (the ledger chains their content instead, see es_ledger).
ALTER TABLE @extschema@.es_events ADD COLUMN hash bytea;
COMMENT ON COLUMN @extschema@.es_events.hash IS
    'SHA-256 of the event''s content chained to its aggregate''s previous event (README, "Tamper evidence"); NULL for events stored by release 1.0';

-- Where the hashes start: events at or below unhashed_through were stored by
-- release 1.0 without a hash.  Written here; a restore adds the dumped row
-- beside the new install's, and the highest counts.
CREATE TABLE @extschema@.es_ledger (
    unhashed_through    bigint NOT NULL,
    started_at          timestamptz NOT NULL
);
INSERT INTO @extschema@.es_ledger (unhashed_through, started_at)
SELECT coalesce(max(e.position), 0), now() FROM @extschema@.es_events e;
COMMENT ON TABLE @extschema@.es_ledger IS
    'ultracore_es: where the event hashes start (events at or below unhashed_through were stored by release 1.0, without one)';

-- The sealed history: block n holds the ledger chain and the number of
-- events below its commit horizon.  Written by es_digest only.
CREATE TABLE @extschema@.es_ledger_blocks (
    block               bigint PRIMARY KEY,
    horizon             xid8 NOT NULL,
    events              bigint NOT NULL,
    total_events        bigint NOT NULL,
    hash                bytea NOT NULL,
    sealed_at           timestamptz NOT NULL
);
COMMENT ON TABLE @extschema@.es_ledger_blocks IS
    'ultracore_es: the sealed history: per block, the events below its commit horizon (in it, in all) and the commit-order chain of their hashes';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_ledger', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_ledger_blocks', '');
REVOKE ALL ON TABLE @extschema@.es_ledger, @extschema@.es_ledger_blocks FROM PUBLIC;

CREATE FUNCTION @extschema@.es_digest()
RETURNS jsonb
AS 'MODULE_PATHNAME', 'es_digest' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_digest() IS
    'ultracore_es: seal the committed history into a ledger block and return its digest (block, horizon, events, hash, sealed_at), to keep outside the database';

CREATE FUNCTION @extschema@.es_verify(aggregate_id text DEFAULT NULL, digest jsonb DEFAULT NULL)
RETURNS TABLE (aggregate_id text, version bigint, "position" bigint, problem text)
AS 'MODULE_PATHNAME', 'es_verify' LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION @extschema@.es_verify(text, jsonb) IS
    'ultracore_es: one row per problem of the history (an event changed, missing or inserted, a ledger block or the given digest that no longer adds up); no rows: intact';
REVOKE ALL ON FUNCTION @extschema@.es_digest(), @extschema@.es_verify(text, jsonb) FROM PUBLIC;

------------------------------------------------------------------------------
-- Personal data that can be forgotten (src/privacy/): registered personal
-- fields are sealed on append with a key of their subject, which es_forget
-- destroys; keys are wrapped by a master key kept outside the database.
------------------------------------------------------------------------------

-- The personal fields of event types.  No foreign key to es_event_types:
-- pg_dump restores extension tables' data in no particular order.
CREATE TABLE @extschema@.es_personal_data (
    event_type      text COLLATE "C" PRIMARY KEY,
    fields          text[] NOT NULL CHECK (cardinality(fields) >= 1),
    subject_field   text,
    registered_at   timestamptz NOT NULL,
    registered_by   text NOT NULL
);
COMMENT ON TABLE @extschema@.es_personal_data IS
    'ultracore_es: top-level fields of an event type''s data that are personal data of a subject (subject_field''s value, or the aggregate id), sealed on append';

-- One key per data subject, wrapped (AES-256-GCM) by the master key that
-- master_key_id names; NULL once es_forget destroyed it.
CREATE TABLE @extschema@.es_subject_keys (
    subject_id      text COLLATE "C" PRIMARY KEY,
    wrapped_key     bytea,
    master_key_id   text,
    created_at      timestamptz NOT NULL,
    forgotten_at    timestamptz,
    CHECK ((wrapped_key IS NULL) = (forgotten_at IS NOT NULL) AND (wrapped_key IS NULL) = (master_key_id IS NULL))
);
COMMENT ON TABLE @extschema@.es_subject_keys IS
    'ultracore_es: the key of each data subject''s personal data, wrapped by the master key; NULL once forgotten';

-- Backends cache both: a change reaches every one (a forgotten key leaves
-- their caches at their next transaction).  New keys need no invalidation.
CREATE TRIGGER es_personal_data_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON @extschema@.es_personal_data FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.es_catalog_changed();
ALTER TABLE @extschema@.es_personal_data ENABLE ALWAYS TRIGGER es_personal_data_changed;
CREATE TRIGGER es_subject_keys_changed AFTER UPDATE OR DELETE OR TRUNCATE
    ON @extschema@.es_subject_keys FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.es_catalog_changed();
ALTER TABLE @extschema@.es_subject_keys ENABLE ALWAYS TRIGGER es_subject_keys_changed;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_personal_data', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_subject_keys', '');
REVOKE ALL ON TABLE @extschema@.es_personal_data, @extschema@.es_subject_keys FROM PUBLIC;

-- A state folded from personal data is stored sealed with the keys of its
-- subjects (listed here; NULL: a plain state).
ALTER TABLE @extschema@.es_snapshots ADD COLUMN subjects text[];
COMMENT ON COLUMN @extschema@.es_snapshots.subjects IS
    'whose personal data the state was folded from: it is stored sealed with their keys (NULL: in the clear)';

CREATE FUNCTION @extschema@.es_register_personal_data(event_type text, fields text[], subject_field text DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'es_register_personal_data' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_register_personal_data(text, text[], text) IS
    'ultracore_es: the top-level fields of event_type''s data are personal data of the subject whose id is in subject_field (NULL: the aggregate id); sealed on append from now on';

CREATE FUNCTION @extschema@.es_forget(subject_id text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'es_forget' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_forget(text) IS
    'ultracore_es: destroy a data subject''s key: its personal fields read as null everywhere from now on; true when a key was destroyed';

CREATE FUNCTION @extschema@.es_rewrap_subject_keys()
RETURNS bigint
AS 'MODULE_PATHNAME', 'es_rewrap_subject_keys' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_rewrap_subject_keys() IS
    'ultracore_es: master key rotation: wrap every subject key that the previous master key wrapped with the current one; returns how many';

CREATE FUNCTION @extschema@.es_reveal(value text)
RETURNS text
AS 'MODULE_PATHNAME', 'es_reveal_text' LANGUAGE C STABLE STRICT PARALLEL RESTRICTED;
CREATE FUNCTION @extschema@.es_reveal(value jsonb)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'es_reveal_jsonb' LANGUAGE C STABLE STRICT PARALLEL RESTRICTED;
COMMENT ON FUNCTION @extschema@.es_reveal(text) IS
    'ultracore_es: a sealed personal field opened (NULL once its subject was forgotten); any other value as it is';
COMMENT ON FUNCTION @extschema@.es_reveal(jsonb) IS
    'ultracore_es: a sealed personal field opened (NULL once its subject was forgotten); any other value as it is';
REVOKE ALL ON FUNCTION @extschema@.es_register_personal_data(text, text[], text), @extschema@.es_forget(text),
    @extschema@.es_rewrap_subject_keys(), @extschema@.es_reveal(text), @extschema@.es_reveal(jsonb) FROM PUBLIC;

-- The read models keep personal fields sealed, as the events hold them;
-- their views open them for whoever reads the view.
CREATE OR REPLACE VIEW @extschema@.es_customers AS
SELECT customer_id, @extschema@.es_reveal(name) AS name, @extschema@.es_reveal(email) AS email,
       @extschema@.es_reveal(phone) AS phone, @extschema@.es_reveal(address) AS address, kyc_status, risk_rating,
       status, created_at, updated_at, version, last_position
  FROM @extschema@.es_rm_customers;
CREATE OR REPLACE VIEW @extschema@.es_transactions AS
SELECT transaction_id, account_id, amount, currency, direction, @extschema@.es_reveal(description) AS description,
       status, created_at, posted_at, settled_at, reversed_at, reversal_reason, failed_at, failure_reason,
       updated_at, version, last_position
  FROM @extschema@.es_rm_transactions;

-- The views now call es_reveal, which their readers must be able to
-- execute (a view's functions run with its reader's privileges): whoever
-- may read one of them gets it.
DO $$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT DISTINCT a.grantee FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
              WHERE c.oid IN ('@extschema@.es_customers'::pg_catalog.regclass, '@extschema@.es_transactions'::pg_catalog.regclass)
                AND a.privilege_type = 'SELECT' AND a.grantee <> c.relowner
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION @extschema@.es_reveal(text), @extschema@.es_reveal(jsonb) TO %s',
                                  CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE g.grantee::regrole::text END);
    END LOOP;
END $$;

-- The notification outbox is a table: it gets the data without its
-- personal fields (a sender reads them with es_get_events, by event id).
-- The delivery worker hands it the events sealed (consumer.c), and the
-- envelopes are left out wherever they are: an upcaster may have renamed or
-- moved a field since it was sealed.
CREATE FUNCTION @extschema@.es_without_personal_data(value jsonb)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'es_without_personal_data' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.es_without_personal_data(jsonb) IS
    'ultracore_es: value without its sealed personal fields, at any depth (an object member or array element that is an envelope is left out)';
-- Any role may call it (it opens nothing); said explicitly, so that a store
-- updated from 1.0 and a new one hold the same privileges.
GRANT EXECUTE ON FUNCTION @extschema@.es_without_personal_data(jsonb) TO PUBLIC;
CREATE OR REPLACE FUNCTION @extschema@.es_notification_handler(event @extschema@.es_events)
RETURNS void LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO @extschema@.es_notification_outbox (event_id, event_type, aggregate_type, aggregate_id, payload)
    VALUES ($1.event_id, $1.event_type, $1.aggregate_type, $1.aggregate_id,
            jsonb_build_object('event_id', $1.event_id, 'event_type', $1.event_type,
                               'aggregate_type', $1.aggregate_type, 'aggregate_id', $1.aggregate_id,
                               'version', $1.version, 'occurred_at', $1.occurred_at,
                               'correlation_id', $1.correlation_id,
                               'data', @extschema@.es_without_personal_data(
                                           $1.data - coalesce(ARRAY(SELECT jsonb_array_elements_text($1.metadata -> 'personal_data' -> 'fields')), '{}'))))
$$;

-- A read model's row is rewritten at each event of its aggregate.  Room left
-- on its page lets the new version stay there (a HOT update: no new index
-- entries, and the old version pruned in place) instead of moving to another
-- page with an entry in every index.  Applies to the pages filled from now.
ALTER TABLE @extschema@.es_rm_customers SET (fillfactor = 60);
ALTER TABLE @extschema@.es_rm_accounts SET (fillfactor = 60);
ALTER TABLE @extschema@.es_rm_transactions SET (fillfactor = 60);
ALTER TABLE @extschema@.es_rm_payments SET (fillfactor = 60);
ALTER TABLE @extschema@.es_rm_loans SET (fillfactor = 60);


------------------------------------------------------------------------------
-- Export (src/read/export.c): a settled range of positions written to files
-- on the server, the events as stored and a manifest, and recorded here: the
-- copy kept outside the database.
------------------------------------------------------------------------------

CREATE TABLE @extschema@.es_exports (
    file            text PRIMARY KEY,
    from_position   bigint NOT NULL,
    to_position     bigint NOT NULL CHECK (to_position > from_position),
    events          bigint NOT NULL,
    bytes           bigint NOT NULL,
    sha256          text NOT NULL,
    manifest        jsonb NOT NULL,
    exported_at     timestamptz NOT NULL,
    exported_by     text NOT NULL
);
CREATE INDEX es_exports_range ON @extschema@.es_exports (from_position, to_position);
COMMENT ON TABLE @extschema@.es_exports IS
    'ultracore_es: every export of events to files (es_export): the range [from_position, to_position), the events file with its size and SHA-256, and the manifest written beside it';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_exports', '');
REVOKE ALL ON TABLE @extschema@.es_exports FROM PUBLIC;

CREATE FUNCTION @extschema@.es_export(from_position bigint, to_position bigint, directory text)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'es_export' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_export(bigint, bigint, text) IS
    'ultracore_es: write the events at positions from_position <= position < to_position, once every transaction that took a position there has ended, to a CSV file in directory on the server, with a manifest (counts, size, SHA-256); returns the manifest; needs pg_write_server_files';
REVOKE ALL ON FUNCTION @extschema@.es_export(bigint, bigint, text) FROM PUBLIC;

------------------------------------------------------------------------------
-- Partitioned history (src/core/partitions.c): es_events is partitioned by
-- position.  The worker makes the partitions ahead of the appends
-- (ultracore_es.partition_events events each); es_archive moves old ones to
-- an archive tablespace; a range that was exported and is covered by
-- snapshots can be dropped.
--
-- The 1.0 table is not rewritten: it is renamed es_events_1_0 and attached
-- as the partition FROM (MINVALUE) TO (MAXVALUE) of a new es_events, with
-- no scan (that bound says only "position IS NOT NULL", which the column
-- already says).
-- The worker then bounds it below the next partition: a CHECK validated
-- under SHARE UPDATE EXCLUSIVE, which appends pass, then a detach and an
-- attach that scan nothing, under a short lock.  An empty 1.0 table (a new
-- install) is dropped instead.
--
-- es_events_overflow, the DEFAULT partition, takes the appends past the
-- partitions made ahead: an append never fails, nor waits on DDL.  It is
-- the extension's, as es_events is; every other partition is the store's
-- data, which pg_dump dumps whole (definition, bounds and rows).
--
-- Each partition has the 1.0 table's indexes, its own: es_events has none
-- (a partitioned index would make ATTACH create its partitions' indexes,
-- and a restore would then find those it dumped already there).  A
-- partitioned table's unique indexes must hold its partition key anyway:
-- event ids are unique across partitions through the key table
-- es_event_ids (written by every append since this update; the 1.0 table
-- keeps its own primary key, which the append probes as well), positions
-- by their ranges (and one sequence), and (aggregate_id, version) is
-- unique in each partition, across them by the aggregate's lock (the
-- append's rule since 1.0).
------------------------------------------------------------------------------

DO $$
DECLARE
    dependents text;
BEGIN
    -- A view of the user's over es_events would keep reading the 1.0 table
    -- alone: the update refuses rather than leave it reading part of history.
    SELECT pg_catalog.string_agg(DISTINCT v.oid::pg_catalog.regclass::text, ', ') INTO dependents
      FROM pg_catalog.pg_depend d
      JOIN pg_catalog.pg_rewrite r ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND r.oid = d.objid
      JOIN pg_catalog.pg_class v ON v.oid = r.ev_class
     WHERE d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
       AND d.refobjid = '@extschema@.es_events'::pg_catalog.regclass
       AND v.oid <> '@extschema@.es_events'::pg_catalog.regclass
       AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend x
                        WHERE x.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND x.objid = v.oid
                          AND x.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass AND x.deptype = 'e');
    IF dependents IS NOT NULL THEN
        RAISE EXCEPTION 'views depend on es_events: %', dependents
            USING ERRCODE = 'dependent_objects_still_exist',
                  DETAIL = 'The update makes es_events a partitioned table; these views would keep reading the 1.0 table alone.',
                  HINT = 'Drop them, run ALTER EXTENSION ultracore_es UPDATE, then create them again.';
    END IF;
END $$;

-- The 1.0 table and its indexes make room for the new table's names.
ALTER TABLE @extschema@.es_events RENAME TO es_events_1_0;
ALTER TABLE @extschema@.es_events_1_0 RENAME CONSTRAINT es_events_event_id_key TO es_events_1_0_event_id_key;
ALTER TABLE @extschema@.es_events_1_0 RENAME CONSTRAINT es_events_version_key TO es_events_1_0_version_key;
ALTER INDEX @extschema@.es_events_commit_order RENAME TO es_events_1_0_commit_order;
ALTER INDEX @extschema@.es_events_position_key RENAME TO es_events_1_0_position_key;
ALTER INDEX @extschema@.es_events_correlation RENAME TO es_events_1_0_correlation;
COMMENT ON TABLE @extschema@.es_events_1_0 IS
    'ultracore_es: partition of es_events: the events stored before the update to 1.1, and until the worker bounded it';

CREATE TABLE @extschema@.es_events (LIKE @extschema@.es_events_1_0 INCLUDING DEFAULTS INCLUDING COMMENTS)
    PARTITION BY RANGE (position);
ALTER SEQUENCE @extschema@.es_events_position_seq OWNED BY @extschema@.es_events.position;
ALTER TABLE @extschema@.es_events ATTACH PARTITION @extschema@.es_events_1_0
    FOR VALUES FROM (MINVALUE) TO (MAXVALUE);
COMMENT ON TABLE @extschema@.es_events IS
    'ultracore_es: the append-only event store, partitioned by position (es_partitions); write with es_append/es_append_batch';
CREATE TRIGGER es_events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON @extschema@.es_events
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.es_refuse_modification();
ALTER TABLE @extschema@.es_events ENABLE ALWAYS TRIGGER es_events_append_only;

CREATE TABLE @extschema@.es_events_overflow (LIKE @extschema@.es_events INCLUDING DEFAULTS);
CREATE UNIQUE INDEX es_events_overflow_version_key ON @extschema@.es_events_overflow (aggregate_id, version);
CREATE INDEX es_events_overflow_commit_order ON @extschema@.es_events_overflow (tx_id, position);
CREATE UNIQUE INDEX es_events_overflow_position_key ON @extschema@.es_events_overflow (position);
CREATE INDEX es_events_overflow_correlation ON @extschema@.es_events_overflow (correlation_id, position)
    WHERE correlation_id IS NOT NULL;
CREATE TRIGGER es_events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON @extschema@.es_events_overflow
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.es_refuse_modification();
ALTER TABLE @extschema@.es_events_overflow ENABLE ALWAYS TRIGGER es_events_append_only;
-- A row SQL routes there (a restore, an owner's INSERT) tells the readers
-- to look in it (src/core/partitions.c); the appends' C path says so itself.
CREATE FUNCTION @extschema@.es_overflow_filling() RETURNS trigger
    AS 'MODULE_PATHNAME', 'es_overflow_filling_trigger' LANGUAGE C;
COMMENT ON FUNCTION @extschema@.es_overflow_filling() IS
    'ultracore_es: trigger telling the readers that es_events_overflow holds rows';
REVOKE ALL ON FUNCTION @extschema@.es_overflow_filling() FROM PUBLIC;
CREATE TRIGGER es_events_overflow_filling BEFORE INSERT ON @extschema@.es_events_overflow
    FOR EACH ROW EXECUTE FUNCTION @extschema@.es_overflow_filling();
ALTER TABLE @extschema@.es_events_overflow ENABLE ALWAYS TRIGGER es_events_overflow_filling;
COMMENT ON TABLE @extschema@.es_events_overflow IS
    'ultracore_es: partition of es_events (DEFAULT): events appended past the partitions made ahead';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_events_overflow', '');
ALTER TABLE @extschema@.es_events ATTACH PARTITION @extschema@.es_events_overflow DEFAULT;

-- Where an aggregate's last event is: a position in its partition, set
-- once finding it took probes of older partitions (an aggregate idle for a
-- long time), then kept in its partition by every append (aggregate.c).
-- Added without a default: no rewrite.
ALTER TABLE @extschema@.es_aggregates ADD COLUMN last_position bigint;
-- The append sets it in place (aggregate.c): a tenth of each page left free
-- keeps that update on the row's page, without new index entries (HOT).
ALTER TABLE @extschema@.es_aggregates SET (fillfactor = 90);
COMMENT ON COLUMN @extschema@.es_aggregates.last_position IS
    'a position in the partition of es_events that holds the aggregate''s last event (NULL: not recorded; the append searches the partitions newest first)';

CREATE TABLE @extschema@.es_event_ids (
    event_id    text COLLATE "C" PRIMARY KEY,
    position    bigint NOT NULL
);
COMMENT ON TABLE @extschema@.es_event_ids IS
    'ultracore_es: the event ids of every partition of es_events but the 1.0 table (which keeps its primary key), with their positions';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_event_ids', '');
REVOKE ALL ON TABLE @extschema@.es_events, @extschema@.es_events_1_0, @extschema@.es_events_overflow,
    @extschema@.es_event_ids FROM PUBLIC;

-- The grants on the 1.0 table go to the new one.
DO $$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT a.grantee, a.privilege_type, a.is_grantable
               FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
              WHERE c.oid = '@extschema@.es_events_1_0'::pg_catalog.regclass AND a.grantee <> a.grantor
    LOOP
        EXECUTE pg_catalog.format('GRANT %s ON TABLE @extschema@.es_events TO %s%s', g.privilege_type,
                                  CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE g.grantee::regrole::text END,
                                  CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END $$;

-- The extension's views and functions over the 1.0 table's row type are made
-- again over the new table's: the same definitions, comments and grants;
-- the catalogs that name a function (regprocedure) follow it.  A user's
-- function over it (a handler) keeps its type, the 1.0 table's: the
-- extension calls it with rows of that type (consumer_catalog.c).
DO $$
DECLARE
    old_type oid := '@extschema@.es_events_1_0'::pg_catalog.regtype;
    ext oid := (SELECT e.oid FROM pg_catalog.pg_extension e WHERE e.extname = 'ultracore_es');
    v record;
    f record;
    c record;
    g record;
    new_oid oid;
BEGIN
    FOR v IN SELECT DISTINCT r.ev_class AS oid
               FROM pg_catalog.pg_depend d
               JOIN pg_catalog.pg_rewrite r ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND r.oid = d.objid
              WHERE d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
                AND d.refobjid = '@extschema@.es_events_1_0'::pg_catalog.regclass
                AND r.ev_class <> '@extschema@.es_events_1_0'::pg_catalog.regclass
    LOOP
        EXECUTE pg_catalog.format('CREATE OR REPLACE VIEW %s AS %s', v.oid::pg_catalog.regclass,
                                  pg_catalog.regexp_replace(pg_catalog.pg_get_viewdef(v.oid),
                                                            '\mes_events_1_0\M', 'es_events', 'g'));
    END LOOP;
    FOR f IN SELECT p.oid, p.oid::pg_catalog.regprocedure::text AS signature, p.proacl,
                    pg_catalog.obj_description(p.oid, 'pg_proc') AS comment,
                    pg_catalog.pg_get_functiondef(p.oid) AS def
               FROM pg_catalog.pg_proc p
               JOIN pg_catalog.pg_depend x ON x.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND x.objid = p.oid
                AND x.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass AND x.refobjid = ext AND x.deptype = 'e'
              WHERE p.prorettype = old_type OR old_type = ANY (p.proargtypes)
    LOOP
        EXECUTE 'DROP FUNCTION ' || f.signature;
        EXECUTE pg_catalog.regexp_replace(f.def, '\mes_events_1_0\M', 'es_events', 'g');
        SELECT p.oid INTO new_oid FROM pg_catalog.pg_proc p
         WHERE p.oid = pg_catalog.regexp_replace(f.signature,
                                                 '\mes_events_1_0\M', 'es_events', 'g')::pg_catalog.regprocedure;
        IF f.comment IS NOT NULL THEN
            EXECUTE pg_catalog.format('COMMENT ON FUNCTION %s IS %L', new_oid::pg_catalog.regprocedure, f.comment);
        END IF;
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', new_oid::pg_catalog.regprocedure);
        FOR g IN SELECT a.grantee, a.is_grantable FROM pg_catalog.aclexplode(
                     coalesce(f.proacl, pg_catalog.acldefault('f', (SELECT p.proowner FROM pg_catalog.pg_proc p WHERE p.oid = new_oid)))) a
                  WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> a.grantor
        LOOP
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %s%s', new_oid::pg_catalog.regprocedure,
                                      CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE g.grantee::regrole::text END,
                                      CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        END LOOP;
        FOR c IN SELECT a.attrelid::pg_catalog.regclass AS rel, a.attname
                   FROM pg_catalog.pg_attribute a
                   JOIN pg_catalog.pg_class t ON t.oid = a.attrelid AND t.relkind = 'r'
                    AND t.relnamespace = '@extschema@'::pg_catalog.regnamespace
                  WHERE a.atttypid = 'pg_catalog.regprocedure'::pg_catalog.regtype AND NOT a.attisdropped
        LOOP
            EXECUTE pg_catalog.format('UPDATE %s SET %I = %s WHERE %I = %s', c.rel, c.attname, new_oid,
                                      c.attname, f.oid);
        END LOOP;
    END LOOP;
END $$;

-- The 1.0 table leaves the extension (and its configuration: its rows are
-- dumped with their partition); it is dropped when empty and nothing of the
-- user's is typed on its rows.
ALTER EXTENSION ultracore_es DROP TABLE @extschema@.es_events_1_0;
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM @extschema@.es_events_1_0)
       AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d
                        WHERE d.refclassid = 'pg_catalog.pg_type'::pg_catalog.regclass
                          AND d.refobjid = '@extschema@.es_events_1_0'::pg_catalog.regtype
                          AND d.deptype = 'n') THEN
        DROP TABLE @extschema@.es_events_1_0;
    END IF;
END $$;

CREATE FUNCTION @extschema@.es_event_position(event_id text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'es_event_position' LANGUAGE C STABLE STRICT PARALLEL RESTRICTED;
COMMENT ON FUNCTION @extschema@.es_event_position(text) IS
    'ultracore_es: the position of an event, by its id (NULL: none); join on event ids through it';
REVOKE ALL ON FUNCTION @extschema@.es_event_position(text) FROM PUBLIC;

-- A dead letter's event, found through its key.
CREATE OR REPLACE VIEW @extschema@.es_dead_letter_queue AS
SELECT d.id, d.consumer AS handler, d.status, d.parked_behind, d.attempts, d.error,
       d.first_failed_at, d.last_failed_at, e.event_id, e.event_type, e.aggregate_type,
       e.aggregate_id, e.version, e.position, e.data
  FROM @extschema@.es_dead_letters d
  JOIN @extschema@.es_events e ON e.position OPERATOR(pg_catalog.=) @extschema@.es_event_position(d.event_id)
 WHERE d.status OPERATOR(pg_catalog.<>) 'resolved';
-- Whoever reads the dead letters or the events under 1.0 may look up positions.
DO $$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT DISTINCT a.grantee
               FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
              WHERE c.oid = '@extschema@.es_dead_letter_queue'::pg_catalog.regclass
                AND a.privilege_type = 'SELECT' AND a.grantee <> a.grantor
             UNION
             SELECT a.grantee
               FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
              WHERE p.oid = '@extschema@.es_get_events(text, bigint, bigint, timestamptz, timestamptz)'::pg_catalog.regprocedure
                AND a.privilege_type = 'EXECUTE' AND a.grantee <> a.grantor
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION @extschema@.es_event_position(text) TO %s',
                                  CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE g.grantee::regrole::text END);
    END LOOP;
END $$;

CREATE FUNCTION @extschema@.es_make_partitions(events bigint DEFAULT NULL)
RETURNS integer
AS 'MODULE_PATHNAME', 'es_make_partitions' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_make_partitions(bigint) IS
    'ultracore_es: make now the partitions of es_events for the next events positions (NULL: ultracore_es.partitions_ahead partitions), as the worker does; returns how many it made';
REVOKE ALL ON FUNCTION @extschema@.es_make_partitions(bigint) FROM PUBLIC;

-- The partitions of es_events, in position order, the DEFAULT last.
CREATE VIEW @extschema@.es_partitions AS
SELECT p.partition, p.from_position, p.to_position, p.is_default,
       coalesce(t.spcname, 'pg_default') AS tablespace,
       greatest(c.reltuples, 0)::bigint AS estimated_events,
       pg_catalog.pg_total_relation_size(c.oid) AS bytes
  FROM (SELECT i.inhrelid::pg_catalog.regclass AS partition, i.inhrelid,
               b.bound = 'DEFAULT' AS is_default,
               (pg_catalog.regexp_match(b.bound, 'FROM \(''?(-?\d+)'))[1]::bigint AS from_position,
               (pg_catalog.regexp_match(b.bound, 'TO \(''?(-?\d+)'))[1]::bigint AS to_position
          FROM pg_catalog.pg_inherits i
          JOIN pg_catalog.pg_class pc ON pc.oid = i.inhrelid,
               LATERAL (SELECT pg_catalog.pg_get_expr(pc.relpartbound, pc.oid) AS bound) b
         WHERE i.inhparent = '@extschema@.es_events'::pg_catalog.regclass) p
  JOIN pg_catalog.pg_class c ON c.oid = p.inhrelid
  LEFT JOIN pg_catalog.pg_tablespace t ON t.oid = c.reltablespace
 ORDER BY p.is_default, p.from_position NULLS FIRST;
COMMENT ON VIEW @extschema@.es_partitions IS
    'ultracore_es: the partitions of es_events: positions from_position <= position < to_position (NULL: unbounded), the DEFAULT one, tablespace, estimated events, size';
REVOKE ALL ON TABLE @extschema@.es_partitions FROM PUBLIC;

CREATE FUNCTION @extschema@.es_archive(before_position bigint)
RETURNS bigint
AS 'MODULE_PATHNAME', 'es_archive' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_archive(bigint) IS
    'ultracore_es: move every partition of es_events wholly below before_position into ultracore_es.archive_tablespace (reads still return their events); refused for events a consumer has not passed; returns the number of events moved';
REVOKE ALL ON FUNCTION @extschema@.es_archive(bigint) FROM PUBLIC;

-- Partitions dropped by es_drop_history, once archived, exported and
-- covered by snapshots: what the database no longer holds, and where it is.
CREATE TABLE @extschema@.es_dropped_history (
    partition       text NOT NULL,
    from_position   bigint,
    to_position     bigint NOT NULL,
    first_position  bigint,
    last_position   bigint,
    events          bigint NOT NULL,
    export_file     text,
    dropped_at      timestamptz NOT NULL,
    dropped_by      text NOT NULL
);
COMMENT ON TABLE @extschema@.es_dropped_history IS
    'ultracore_es: partitions of es_events dropped by es_drop_history: their range (from_position NULL: unbounded), events, the export that holds them, when and by whom';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_dropped_history', '');
REVOKE ALL ON TABLE @extschema@.es_dropped_history FROM PUBLIC;

CREATE FUNCTION @extschema@.es_drop_history(before_position bigint)
RETURNS bigint
AS 'MODULE_PATHNAME', 'es_drop_history' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_drop_history(bigint) IS
    'ultracore_es: drop every archived partition of es_events wholly below before_position, each only once exported (es_exports) and with a snapshot of every aggregate at or after its events there; returns the number of events dropped';
REVOKE ALL ON FUNCTION @extschema@.es_drop_history(bigint) FROM PUBLIC;
