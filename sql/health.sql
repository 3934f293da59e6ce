-- es_health(): each condition a regress run can bring about, and the
-- arguments of release 1.1's delivery settings (timeouts, parallelism).

-- The launcher and this database's two delivery workers run.
SELECT component, status FROM es_health() WHERE component ~ '^(launcher|worker)' ORDER BY component;
SELECT kind, member, pid IS NOT NULL AS running FROM es_worker_state() ORDER BY kind, member;

-- Thresholds small enough to cross here (any role may set its own).
SET ultracore_es.health_lag_events = 10;
SET ultracore_es.health_horizon_seconds = 1;
SET ultracore_es.health_batch_seconds = 1;

-- A handler that keeps up: ok.
CREATE TABLE es_test.health_seen (event_id text);
CREATE FUNCTION es_test.health_record(event es_events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO es_test.health_seen VALUES (event.event_id)
$$;
SELECT es_register_handler('health_h', 'es_test.health_record(es_events)', event_types => ARRAY['AUDIT_RECORD_CREATED']);
SELECT count(*) FROM (SELECT es_append('Audit', 'HEALTH-' || i, 'AUDIT_RECORD_CREATED', '{}', 0)
                        FROM generate_series(1, 3) i) a;
SELECT es_test.wait_until($$SELECT count(*) = 3 FROM es_test.health_seen$$) AS delivered;
SELECT status, regexp_replace(detail, ', [0-9.]+ s', ', _ s') AS detail FROM es_health() WHERE component = 'handler health_h';

-- Paused, with events waiting: a warning; ten times the threshold: critical.
SELECT es_pause_handler('health_h');
SELECT count(*) FROM (SELECT es_append('Audit', 'HEALTH-' || i, 'AUDIT_RECORD_CREATED', '{}', 0)
                        FROM generate_series(4, 15) i) a;
SELECT status, regexp_replace(detail, ', [0-9.]+ s', ', _ s') AS detail FROM es_health() WHERE component = 'handler health_h';
SELECT count(*) FROM (SELECT es_append('Audit', 'HEALTH-' || i, 'AUDIT_RECORD_CREATED', '{}', 0)
                        FROM generate_series(16, 120) i) a;
SELECT status, regexp_replace(detail, ', [0-9.]+ s', ', _ s') AS detail FROM es_health() WHERE component = 'handler health_h';
SELECT es_resume_handler('health_h');
SELECT es_test.wait_until($$SELECT count(*) = 120 FROM es_test.health_seen$$) AS caught_up;
SELECT status, regexp_replace(detail, ', [0-9.]+ s', ', _ s') AS detail FROM es_health() WHERE component = 'handler health_h';

-- A handler past its timeout: its call is cancelled, a failed attempt; with
-- no retries it is dead-lettered with the timeout in the error.
CREATE FUNCTION es_test.health_slow(event es_events) RETURNS void LANGUAGE sql AS 'SELECT pg_sleep(2)';
SELECT es_register_handler('health_slow', 'es_test.health_slow(es_events)', event_types => ARRAY['AUDIT_FINDING_RAISED'],
                           max_retries => 0, timeout => '200 ms');
SELECT timeout, parallelism FROM es_handler_status WHERE handler = 'health_slow';
SELECT count(*) FROM (SELECT es_append('Audit', 'HEALTH-SLOW', 'AUDIT_FINDING_RAISED', '{}', 0)) a;
SELECT es_test.wait_until($$SELECT count(*) = 1 FROM es_dead_letters WHERE consumer = 'health_slow'$$) AS dead_lettered;
SELECT status, attempts, error FROM es_dead_letters WHERE consumer = 'health_slow';
SELECT status, detail ~ '^[0-9]+ unresolved' AS counted FROM es_health() WHERE component = 'dead letters';

-- A handler failing, with retries left: a warning while its retry is pending.
CREATE FUNCTION es_test.health_fail(event es_events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'not today';
END $$;
SELECT es_register_handler('health_fail', 'es_test.health_fail(es_events)', event_types => ARRAY['AUDIT_FINDING_RESOLVED'],
                           max_retries => 5, backoff => '1 hour');
SELECT count(*) FROM (SELECT es_append('Audit', 'HEALTH-FAIL', 'AUDIT_FINDING_RESOLVED', '{}', 0)) a;
SELECT es_test.wait_until($$SELECT retry_event_id IS NOT NULL FROM es_handler_status WHERE handler = 'health_fail'$$) AS retrying;
SELECT status, detail ~ 'retrying event .* \(attempt 2 at ' AS retrying, detail ~ 'last error: P0001: not today' AS error
  FROM es_health() WHERE component = 'handler health_fail';
SELECT es_unregister_handler('health_fail');

-- A worker in one batch for longer than the threshold: a warning naming it.
CREATE FUNCTION es_test.health_long(event es_events) RETURNS void LANGUAGE sql AS 'SELECT pg_sleep(2.5)';
SELECT es_register_handler('health_long', 'es_test.health_long(es_events)', event_types => ARRAY['AUDIT_REVIEW_COMPLETED']);
SELECT count(*) FROM (SELECT es_append('Audit', 'HEALTH-LONG', 'AUDIT_REVIEW_COMPLETED', '{}', 0)) a;
SELECT es_test.wait_until($$SELECT count(*) = 1 FROM es_health()
                             WHERE component ~ '^worker delivery' AND status = 'warning'
                               AND detail ~ 'consumer health_long for '$$) AS stuck_reported;
SELECT es_test.wait_until($$SELECT events_processed = 1 FROM es_handler_status WHERE handler = 'health_long'
                             AND NOT EXISTS (SELECT FROM es_health() WHERE component ~ '^worker' AND status <> 'ok')$$)
       AS done;
SELECT es_unregister_handler('health_long');

-- The commit horizon held back by a transaction that appended (this one),
-- named with its pid.
BEGIN;
SELECT count(*) FROM (SELECT es_append('Audit', 'HEALTH-OPEN', 'AUDIT_RECORD_CREATED', '{}', 0)) a;
SELECT pg_sleep(1.2);
SELECT status, detail ~ ('^oldest: transaction [0-9]+ of pid ' || pg_backend_pid() || ' \(') AS named
  FROM es_health() WHERE component = 'commit horizon';
COMMIT;

-- The commit horizon held back by a prepared transaction.
BEGIN;
SELECT count(*) FROM (SELECT es_append('Audit', 'HEALTH-PREPARED', 'AUDIT_RECORD_CREATED', '{}', 0)) a;
PREPARE TRANSACTION 'health_horizon';
SELECT pg_sleep(1.2);
SELECT status, detail ~ '^oldest: prepared transaction [0-9]+ \(health_horizon\)' AS named
  FROM es_health() WHERE component = 'commit horizon';
ROLLBACK PREPARED 'health_horizon';
SELECT status FROM es_health() WHERE component = 'commit horizon';

RESET ultracore_es.health_lag_events;
RESET ultracore_es.health_horizon_seconds;
RESET ultracore_es.health_batch_seconds;
SELECT es_unregister_handler('health_h');
SELECT es_unregister_handler('health_slow');

-- The arguments.
SELECT es_test.error_of($$SELECT es_register_handler('h', 'es_test.health_record(es_events)', timeout => '0')$$);
SELECT es_test.error_of($$SELECT es_register_handler('h', 'es_test.health_record(es_events)', timeout => '-1 second')$$);
SELECT es_test.error_of($$SELECT es_register_handler('h', 'es_test.health_record(es_events)', timeout => '2 days')$$);
SELECT es_test.error_of($$SELECT es_register_handler('h', 'es_test.health_record(es_events)', parallelism => 0)$$);
SELECT es_test.error_of($$SELECT es_register_handler('h', 'es_test.health_record(es_events)', parallelism => 65)$$);
SELECT es_test.error_of($$SELECT es_register_projection('p', 'es_test.health_record(es_events)', timeout => '0.5 ms')$$);
SELECT es_test.error_of($$SELECT es_segment_of('ACC-1', 0)$$);
SELECT es_test.error_of($$SELECT es_segment_of('ACC-1', 65)$$);
-- NULL arguments: a NULL timeout is none, a NULL parallelism is 1, es_segment_of is strict.
SELECT es_register_handler('h', 'es_test.health_record(es_events)', timeout => NULL, parallelism => NULL);
SELECT timeout, parallelism FROM es_handler_status WHERE handler = 'h';
SELECT es_unregister_handler('h');
SELECT es_segment_of(NULL, 2), es_segment_of('ACC-1', NULL);
-- The segments are FNV-1a of the id's bytes: the same on every server, forever.
SELECT id, es_segment_of(id, 2) AS of_2, es_segment_of(id, 7) AS of_7
  FROM unnest(ARRAY['ACC-1', 'ACC-2', 'CUST001', '', 'Ü']) id;
-- The store's triggers, ENABLE ALWAYS as made; a data-only restore leaves
-- them ENABLE, and a disabled es_events_append_only lets events change.
ALTER TABLE es_upcasters ENABLE TRIGGER es_upcasters_changed;
SELECT status, detail ~ '^not ENABLE ALWAYS: es_upcasters_changed \(' AS names_it
  FROM es_health() WHERE component = 'triggers';
ALTER TABLE es_upcasters ENABLE ALWAYS TRIGGER es_upcasters_changed;
SELECT status, regexp_replace(detail, '^[0-9]+ triggers(.*) its [0-9]+ partitions', '_ triggers\1 its _ partitions') AS detail
  FROM es_health() WHERE component = 'triggers';
ALTER TABLE es_events_overflow ENABLE TRIGGER es_events_overflow_filling;
SELECT status, detail FROM es_health() WHERE component = 'triggers';
ALTER TABLE es_events_overflow ENABLE TRIGGER es_events_append_only;
SELECT status, regexp_replace(detail, '1 of [0-9]+ tables', '1 of _ tables', 'g') AS detail
  FROM es_health() WHERE component = 'triggers';
ALTER TABLE es_events_overflow DISABLE TRIGGER es_events_append_only;
SELECT status, regexp_replace(detail, '1 of [0-9]+ tables', '1 of _ tables', 'g') AS detail
  FROM es_health() WHERE component = 'triggers';
ALTER TABLE es_events_overflow ENABLE ALWAYS TRIGGER es_events_append_only;
ALTER TABLE es_events_overflow ENABLE ALWAYS TRIGGER es_events_overflow_filling;
SELECT status FROM es_health() WHERE component = 'triggers';
