-- es_load_aggregate with the default reducer: replay, versions, points in time.
SELECT version FROM es_append_batch('Customer', 'LOAD-C1', $$[
    {"event_type": "CUSTOMER_CREATED", "data": {"name": "John Doe", "email": "john@example.com"},
     "occurred_at": "2025-01-01T10:00:00Z"},
    {"event_type": "CUSTOMER_UPDATED", "data": {"email": "john.doe@example.com"},
     "occurred_at": "2025-01-02T10:00:00Z"},
    {"event_type": "CUSTOMER_KYC_COMPLETED", "data": {"kyc_status": "verified", "level": "full"},
     "occurred_at": "2025-01-03T10:00:00Z"},
    {"event_type": "CUSTOMER_RISK_ASSESSED", "data": {"risk_rating": "low", "level": null},
     "occurred_at": "2025-01-04T10:00:00Z"}
  ]$$, expected_version => 0);

-- The guide's fold: the creating event sets the state, later events merge into it.
SELECT aggregate_type, state, version, snapshot_version, events_applied FROM es_load_aggregate('LOAD-C1');
-- At a version, and as it stood at a time.
SELECT state, version FROM es_load_aggregate('LOAD-C1', at_version => 2);
SELECT state, version FROM es_load_aggregate('LOAD-C1', at_time => '2025-01-03 12:00:00+00');
SELECT state, version FROM es_load_aggregate('LOAD-C1', at_version => 1, at_time => '2025-01-03 12:00:00+00');
SELECT state, version FROM es_load_aggregate('LOAD-C1', at_time => '2024-12-31');
SELECT aggregate_type, state, version, snapshot_version, events_applied FROM es_load_aggregate('NO-SUCH-AGG');
SELECT state, version FROM es_load_aggregate('LOAD-C1', at_version => 0);

-- A second creating event starts over (a re-onboarded customer).
SELECT version FROM es_append('Customer', 'LOAD-C1', 'CUSTOMER_CREATED', '{"name": "John Doe", "segment": "retail"}', 4);
SELECT version FROM es_append('Customer', 'LOAD-C1', 'CUSTOMER_UPDATED', '{"phone": "+61400000000"}', 5);
SELECT state, version, events_applied FROM es_load_aggregate('LOAD-C1');

-- The same fold as an SQL function, one event at a time.
SELECT es_default_reducer(NULL, e) FROM es_get_events('LOAD-C1', to_version => 1) e;
SELECT es_default_reducer('{"a": 1, "email": "old"}', e) FROM es_get_events('LOAD-C1', from_version => 2, to_version => 2) e;
CREATE AGGREGATE es_test.fold(es_events) (SFUNC = es_default_reducer, STYPE = jsonb);
SELECT es_test.fold(e ORDER BY version) = (SELECT state FROM es_load_aggregate('LOAD-C1')) AS same_state
  FROM es_get_events('LOAD-C1') e;
-- A long history: the default fold makes its pairs anew from the state
-- every 1,024 events, so that it keeps the state, not every payload; the
-- state is the same as the SQL fold's, creating events and all.
SELECT count(*) FROM es_append_batch('Customer', 'LOAD-LONG', (
    SELECT jsonb_agg(jsonb_build_object(
               'event_type', CASE WHEN g % 1500 = 1 THEN 'CUSTOMER_CREATED' ELSE 'CUSTOMER_UPDATED' END,
               'data', jsonb_build_object('k' || (g % 37), g, 'last', g, 'since_' || (g / 1500), true)) ORDER BY g)
      FROM generate_series(1, 3500) g), 0);
SELECT es_test.fold(e ORDER BY version) = (SELECT state FROM es_load_aggregate('LOAD-LONG')) AS same_state,
       (SELECT events_applied FROM es_load_aggregate('LOAD-LONG')) AS events_applied
  FROM es_get_events('LOAD-LONG') e;

-- Argument errors.
SELECT es_test.error_of($$SELECT * FROM es_load_aggregate(NULL)$$);
SELECT es_test.error_of($$SELECT * FROM es_load_aggregate('LOAD-C1', at_version => 7)$$);
SELECT es_test.error_of($$SELECT * FROM es_load_aggregate('LOAD-C1', at_version => -1)$$);
