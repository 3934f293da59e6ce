-- The main job's demo: the flows of the event-sourcing guide against ultracore_es.
\set ON_ERROR_STOP 1
\pset footer off
\echo
\echo '== 1. A customer is created (version 1), with the ids of the request that caused it'
SELECT * FROM es_append('Customer', 'CUST001', 'CUSTOMER_CREATED',
                        '{"name": "John Doe", "email": "john@example.com"}',
                        expected_version => 0, event_id => 'evt_001',
                        causation_id => 'cmd_onboard', correlation_id => 'req_12345',
                        occurred_at => now() - interval '2 days');

\echo '== 2. The customer is updated (version 2), caused by the first event, same request'
SELECT * FROM es_append('Customer', 'CUST001', 'CUSTOMER_UPDATED',
                        '{"email": "john.doe@example.com", "phone": "+61400000000"}',
                        expected_version => 1, event_id => 'evt_002',
                        causation_id => 'evt_001', correlation_id => 'req_12345');

\echo '== 3. An account is opened for the customer, with its first balance, in one atomic batch'
SELECT * FROM es_append_batch('Account', 'ACC001', $$[
    {"event_type": "ACCOUNT_OPENED", "data": {"customer_id": "CUST001", "currency": "AUD", "type": "savings"}},
    {"event_type": "ACCOUNT_BALANCE_UPDATED", "data": {"balance": "250.00"}}
  ]$$, expected_version => 0, causation_id => 'evt_002', correlation_id => 'req_12345');

\echo '== 4. Two tellers edit the customer from version 2: the second one gets a version conflict'
SELECT version FROM es_append('Customer', 'CUST001', 'CUSTOMER_KYC_COMPLETED', '{"level": "full"}',
                              expected_version => 2);
DO $$
DECLARE
    detail text;
BEGIN
    PERFORM es_append('Customer', 'CUST001', 'CUSTOMER_RISK_ASSESSED', '{"rating": "low"}',
                      expected_version => 2);
EXCEPTION WHEN SQLSTATE 'UE001' THEN
    GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
    RAISE NOTICE 'caught SQLSTATE %: % (%)', SQLSTATE, SQLERRM, detail;
END $$;
\echo '   ... so it reloads the version and retries'
SELECT version FROM es_append('Customer', 'CUST001', 'CUSTOMER_RISK_ASSESSED', '{"rating": "low"}',
                              expected_version => es_aggregate_version('CUST001'));

\echo '== 5. The customer''s events, read back in version order'
SELECT version, event_type, data, causation_id, correlation_id,
       to_char(occurred_at, 'YYYY-MM-DD HH24:MI') AS occurred_at
  FROM es_get_events('CUST001');

\echo '== 6. The customer as it was a day ago (point in time)'
SELECT version, event_type, data FROM es_get_events('CUST001', end_timestamp => now() - interval '1 day');

\echo '== 7. Everything request req_12345 caused, and the causation chain of the account''s balance'
SELECT event_id, aggregate_id, version, event_type FROM es_correlated_events('req_12345');
SELECT event_id, aggregate_id, event_type, causation_id
  FROM es_causation_chain((SELECT event_id FROM es_events WHERE aggregate_id = 'ACC001' AND version = 2));

\echo '== 8. The whole store in commit order, as a consumer reads it from a checkpoint'
SELECT tx_id, position, aggregate_id, version, event_type FROM es_read_all('0', 0, max_count => 100);

\echo '== 9. The aggregates with their current versions'
SELECT aggregate_id, aggregate_type, version FROM es_aggregate_versions ORDER BY 1;
