-- es_append_batch: many events to one aggregate, atomically, in one call.
SELECT event_id = 'evt_b2' OR event_id ~ '^[0-9a-f-]{36}$' AS id_ok, version,
       position - min(position) OVER () AS offset_in_batch
  FROM es_append_batch('Account', 'ACC100', $$[
    {"event_type": "ACCOUNT_OPENED", "data": {"customer_id": "CUST001", "currency": "AUD"}},
    {"event_type": "ACCOUNT_LIMIT_CHANGED", "data": {"limit": 1000}, "event_id": "evt_b2"},
    {"event_type": "ACCOUNT_BALANCE_UPDATED", "data": {"balance": 250.00}}
  ]$$, expected_version => 0);
SELECT version, position - min(position) OVER () AS offset_in_batch, event_type, data
  FROM es_events WHERE aggregate_id = 'ACC100' ORDER BY version;
SELECT count(DISTINCT tx_id) AS transactions, count(DISTINCT recorded_at) AS recording_times
  FROM es_events WHERE aggregate_id = 'ACC100';

-- One expected version for the batch; defaults for metadata, causation and correlation.
SELECT version FROM es_append_batch('Account', 'ACC100', $$[
    {"event_type": "ACCOUNT_BALANCE_UPDATED", "data": {"balance": 200}},
    {"event_type": "ACCOUNT_BALANCE_UPDATED", "data": {"balance": 150},
     "metadata": {"channel": "atm"}, "causation_id": "cmd_own", "correlation_id": "req_own",
     "occurred_at": "2025-02-01T09:30:00Z"}
  ]$$, expected_version => 3, metadata => '{"channel": "branch"}',
  causation_id => 'cmd_batch', correlation_id => 'req_batch');
SELECT version, metadata, causation_id, correlation_id, occurred_at = recorded_at AS occurred_now
  FROM es_events WHERE aggregate_id = 'ACC100' AND version > 3 ORDER BY version;

-- A stale expected version refuses the whole batch.
SELECT * FROM es_test.state() \gset before_
SELECT es_test.error_of($$SELECT es_append_batch('Account', 'ACC100',
    '[{"event_type": "ACCOUNT_BALANCE_UPDATED", "data": {}}]', expected_version => 3)$$);
-- A bad element anywhere refuses the whole batch, before anything is written.
SELECT es_test.error_of($$SELECT es_append_batch('Account', 'ACC100', '[
    {"event_type": "ACCOUNT_BALANCE_UPDATED", "data": {"balance": 1}},
    {"event_type": "ACCOUNT_TELEPORTED", "data": {}}]')$$);
SELECT es_test.error_of($$SELECT es_append_batch('Account', 'ACC100', '[
    {"event_type": "ACCOUNT_BALANCE_UPDATED", "data": {"balance": 1}},
    {"event_type": "CUSTOMER_CREATED", "data": {}}]')$$);

-- Malformed batches.
SELECT es_test.error_of($$SELECT es_append_batch('Account', 'ACC100', NULL)$$);
SELECT es_test.error_of($$SELECT es_append_batch('Account', 'ACC100', '{"event_type": "ACCOUNT_OPENED"}')$$);
SELECT es_test.error_of($$SELECT es_append_batch('Account', 'ACC100', '"ACCOUNT_OPENED"')$$);
SELECT es_test.error_of($$SELECT es_append_batch('Account', 'ACC100', '[]')$$);
-- Past the limit, refused before anything is allocated for it (it failed
-- with an internal error past 11 million).
SELECT es_test.error_of($$SELECT es_append_batch('Account', 'ACC100',
    (SELECT jsonb_agg('{"event_type": "ACCOUNT_BALANCE_UPDATED"}'::jsonb) FROM generate_series(1, 1000001)))$$);
SELECT es_test.error_of($$SELECT es_append_batch('Account', 'ACC100', '[1, 2]')$$);
SELECT es_test.error_of($$SELECT es_append_batch('Account', 'ACC100', '[{"data": {}}]')$$);
SELECT es_test.error_of($$SELECT es_append_batch('Account', 'ACC100', '[{"event_type": null}]')$$);
SELECT es_test.error_of($$SELECT es_append_batch('Account', 'ACC100', '[{"event_type": 7}]')$$);
SELECT es_test.error_of($$SELECT es_append_batch('Account', 'ACC100', '[{"eventType": "ACCOUNT_OPENED"}]')$$);
SELECT es_test.error_of($$SELECT es_append_batch('Account', 'ACC100',
    '[{"event_type": "ACCOUNT_BALANCE_UPDATED", "data": [1, 2]}]')$$);
SELECT es_test.error_of($$SELECT es_append_batch('Account', 'ACC100',
    '[{"event_type": "ACCOUNT_BALANCE_UPDATED", "metadata": "x"}]')$$);
SELECT es_test.error_of($$SELECT es_append_batch('Account', 'ACC100',
    '[{"event_type": "ACCOUNT_BALANCE_UPDATED", "occurred_at": "yesterday-ish"}]')$$);
SELECT es_test.error_of($$SELECT es_append_batch('Account', 'ACC100',
    '[{"event_type": "ACCOUNT_BALANCE_UPDATED", "event_id": ""}]')$$);
SELECT es_test.error_of($$SELECT es_append_batch('Account', 'ACC100',
    '[{"event_type": "ACCOUNT_BALANCE_UPDATED", "event_id": "dup"},
      {"event_type": "ACCOUNT_BALANCE_UPDATED", "event_id": "dup"}]')$$);
SELECT es_test.error_of($$SELECT es_append_batch('Account', 'ACC100', 'not json')$$);
SELECT events = :before_events AS same_events, aggregates = :before_aggregates AS same_aggregates,
       last_position = :before_last_position AS no_position_taken
  FROM es_test.state();
-- Errors say which element was wrong.
\set VERBOSITY default
\set SHOW_CONTEXT always
SELECT es_append_batch('Account', 'ACC100', '[{"event_type": "ACCOUNT_BALANCE_UPDATED"}, {"event_type": "X Y"}]');
\set SHOW_CONTEXT errors

-- A large batch crosses the insert slices: versions and positions stay contiguous.
SELECT count(*) AS events, min(version) AS first, max(version) AS last,
       max(position) - min(position) + 1 = count(*) AS positions_contiguous,
       bool_and(position - version = first_offset) AS positions_follow_versions
  FROM (SELECT r.*, first_value(position - version) OVER (ORDER BY version) AS first_offset
          FROM es_append_batch('Account', 'ACC-BIG',
                 (SELECT jsonb_agg(jsonb_build_object('event_type', 'ACCOUNT_BALANCE_UPDATED',
                                                      'data', jsonb_build_object('n', g)))
                    FROM generate_series(1, 2500) g)) r) s;
SELECT count(*), min(version), max(version), count(DISTINCT event_id)
  FROM es_get_events('ACC-BIG');
