-- es_get_events: one aggregate's stream in version order, ranges, point in time.
SELECT version FROM es_append_batch('Loan', 'LOAN001', $$[
    {"event_type": "LOAN_APPLICATION_SUBMITTED", "data": {"amount": 50000}, "occurred_at": "2025-01-01T09:00:00Z"},
    {"event_type": "LOAN_APPROVED", "data": {"rate": 0.065}, "occurred_at": "2025-01-03T09:00:00Z"},
    {"event_type": "LOAN_DISBURSED", "data": {"amount": 50000}, "occurred_at": "2025-01-05T09:00:00Z"},
    {"event_type": "LOAN_REPAYMENT_MADE", "data": {"amount": 1200}, "occurred_at": "2025-02-05T09:00:00Z"},
    {"event_type": "LOAN_REPAYMENT_MADE", "data": {"amount": 1200}, "occurred_at": "2025-03-05T09:00:00Z"}
  ]$$, expected_version => 0);

SELECT version, event_type, data, occurred_at FROM es_get_events('LOAN001');
SELECT version FROM es_get_events('LOAN001', from_version => 3);
SELECT version FROM es_get_events('LOAN001', from_version => 2, to_version => 3);
SELECT version FROM es_get_events('LOAN001', to_version => 1);
SELECT version FROM es_get_events('LOAN001', from_version => 0, to_version => 2);
SELECT count(*) FROM es_get_events('LOAN001', from_version => 4, to_version => 2);
SELECT count(*) FROM es_get_events('NO-SUCH-LOAN');

-- Point in time: the events that had occurred by then (the guide's end_timestamp).
SELECT version, event_type FROM es_get_events('LOAN001', end_timestamp => '2025-01-04');
SELECT version FROM es_get_events('LOAN001', end_timestamp => '2025-02-05 09:00:00+00');
SELECT count(*) FROM es_get_events('LOAN001', end_timestamp => '2024-12-31');
SELECT version FROM es_get_events('LOAN001', from_version => 2, end_timestamp => '2025-01-06');
-- A stream is cut at its first later event: a point-in-time read is a prefix,
-- even when a later version carries an earlier occurred_at.
SELECT version FROM es_append('Loan', 'LOAN001', 'LOAN_DEFAULTED', '{}', 5, occurred_at => '2025-01-02');
SELECT version FROM es_get_events('LOAN001', end_timestamp => '2025-01-02 12:00:00+00');

-- Argument errors.
SELECT es_test.error_of($$SELECT * FROM es_get_events(NULL)$$);
SELECT es_test.error_of($$SELECT * FROM es_get_events('')$$);
SELECT es_test.error_of($$SELECT * FROM es_get_events('LOAN001', from_version => -1)$$);
SELECT es_test.error_of($$SELECT * FROM es_get_events('LOAN001', to_version => -5)$$);

-- A long stream is returned whole and in order.
SELECT count(*) FROM es_append_batch('Account', 'ACC-LONG',
    (SELECT jsonb_agg(jsonb_build_object('event_type', 'ACCOUNT_BALANCE_UPDATED', 'data', jsonb_build_object('n', g)))
       FROM generate_series(1, 3000) g));
SELECT count(*), bool_and(version = (data->>'n')::bigint) AS in_order
  FROM es_get_events('ACC-LONG');

-- Current versions, one probe per aggregate.
SELECT es_aggregate_version('LOAN001'), es_aggregate_version('ACC-LONG');
SELECT aggregate_id, aggregate_type, version FROM es_aggregate_versions
 WHERE aggregate_id IN ('LOAN001', 'ACC-LONG') ORDER BY 1;
SELECT es_test.error_of($$SELECT es_aggregate_version(NULL)$$);
