-- Monitoring: shared-memory counters and the views built on them.
CREATE FUNCTION es_test.count_it(event es_events) RETURNS void LANGUAGE sql AS 'SELECT';
SELECT es_register_handler('counter', 'es_test.count_it(es_events)');
SELECT count(*) FROM es_append_batch('Analytics', 'ST-1',
    (SELECT jsonb_agg(jsonb_build_object('event_type', 'ANALYTICS_METRIC_RECORDED', 'data', jsonb_build_object('n', g)))
       FROM generate_series(1, 20) g));
SELECT es_test.wait_until($$SELECT events_processed = 20 AND lag_events = 0 FROM es_stats WHERE consumer = 'counter'$$)
       AS caught_up;
SELECT consumer, kind, paused, events_processed, lag_events, lag_seconds, dead_letters,
       latency_p50_ms > 0 AND latency_p99_ms >= latency_p50_ms AS latency_measured,
       recent_latency_p99_ms IS NOT NULL AS recent_measured
  FROM es_stats WHERE consumer = 'counter';
-- Paused consumers lag.
SELECT consumer, events_processed, lag_events FROM es_stats WHERE consumer = 'es_audit_trail' AND lag_events > 0;
SELECT worker_pid IS NOT NULL AS worker, events_appended > 20 AS counted,
       appended_per_second_last_minute > 0 AS recent_rate, appended_per_second_since_start > 0 AS rate
  FROM es_store_stats;
-- Counted only at commit: rolled-back appends are not.
SELECT events_appended AS before FROM es_store_stats \gset
BEGIN;
SELECT count(*) FROM es_append_batch('Analytics', 'ST-2', '[{"event_type": "ANALYTICS_METRIC_RECORDED"}]');
ROLLBACK;
BEGIN;
SELECT count(*) FROM es_append_batch('Analytics', 'ST-3', '[{"event_type": "ANALYTICS_METRIC_RECORDED"}]');
SAVEPOINT s;
SELECT count(*) FROM es_append_batch('Analytics', 'ST-4', '[{"event_type": "ANALYTICS_METRIC_RECORDED"}]');
ROLLBACK TO s;
COMMIT;
SELECT events_appended - :before AS counted FROM es_store_stats;
SELECT es_unregister_handler('counter');
