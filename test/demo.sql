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

\echo '== 10. The account''s state, rebuilt from its events (the default reducer merges each event''s data)'
SELECT aggregate_type, state, version, snapshot_version, events_applied FROM es_load_aggregate('ACC001');
\echo '   ... and with a snapshot every 2 events, the next load starts from the snapshot'
SELECT es_set_snapshot_policy('Account', 2);
SELECT version FROM es_append('Account', 'ACC001', 'ACCOUNT_BALANCE_UPDATED', '{"balance": "300.00"}', 2);
SELECT version FROM es_append('Account', 'ACC001', 'ACCOUNT_BALANCE_UPDATED', '{"balance": "275.00"}', 3);
SELECT state, version, snapshot_version, events_applied FROM es_load_aggregate('ACC001');

\echo '== 11. Handlers: the background worker delivers each committed event once, in commit order'
SELECT es_resume_handler('es_audit_trail');           -- built-in handlers are off until switched on
SELECT es_resume_handler('es_notification_outbox');
CREATE TABLE payment_ledger (payment_id text, event_type text, amount numeric);
-- A handler that rejects amounts it cannot book yet: it fails, is retried, then dead-lettered.
CREATE FUNCTION book_payment(event es_events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF (event.data->>'amount')::numeric > 10000 THEN
        RAISE EXCEPTION 'amount % above the booking limit', event.data->>'amount';
    END IF;
    INSERT INTO payment_ledger VALUES (event.aggregate_id, event.event_type, (event.data->>'amount')::numeric);
END $$;
SELECT es_register_handler('book_payment', 'book_payment(es_events)',
                           event_types => ARRAY['PAYMENT_INITIATED', 'PAYMENT_COMPLETED'],
                           max_retries => 2, backoff => '100 ms');
SELECT version FROM es_append('Payment', 'PAY001', 'PAYMENT_INITIATED', '{"amount": 120}', 0);
SELECT version FROM es_append('Payment', 'PAY001', 'PAYMENT_COMPLETED', '{"amount": 120}', 1);
SELECT version FROM es_append('Payment', 'PAY002', 'PAYMENT_INITIATED', '{"amount": 25000}', 0);
SELECT version FROM es_append('Payment', 'PAY002', 'PAYMENT_COMPLETED', '{"amount": 25000}', 1);
-- Wait (at most 30 s) for the worker.
DO $$
BEGIN
    FOR i IN 1..600 LOOP
        EXIT WHEN (SELECT count(*) FROM es_dead_letters) = 2 AND (SELECT count(*) FROM payment_ledger) = 2;
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
SELECT * FROM payment_ledger;
\echo '   PAY002 failed three times (100 ms, then 200 ms apart) and was dead-lettered; its completion is parked behind it'
SELECT id, handler, status, attempts, error, aggregate_id, version, event_type FROM es_dead_letter_queue;
\echo '   ... the limit is raised, the dead letter retried: it is booked, then the parked event'
CREATE OR REPLACE FUNCTION book_payment(event es_events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO payment_ledger VALUES (event.aggregate_id, event.event_type, (event.data->>'amount')::numeric)
$$;
SELECT es_retry_dead_letters('book_payment') AS retried;
DO $$
BEGIN
    FOR i IN 1..600 LOOP
        EXIT WHEN (SELECT count(*) FROM payment_ledger) = 4;
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
SELECT * FROM payment_ledger;

\echo '== 12. The built-in handlers: the audit trail and the notification outbox'
SELECT event_type, aggregate_id, version, appended_by FROM es_audit_trail ORDER BY position;
BEGIN;
SELECT id, event_type, aggregate_id, status FROM es_claim_notifications(10);
SELECT es_complete_notification(id) FROM es_notification_outbox WHERE status = 'sending';
COMMIT;

\echo '== 13. What an operator watches'
SELECT events_appended, appended_per_second_last_minute, dead_letters FROM es_store_stats;
SELECT consumer, events_processed, latency_p50_ms, latency_p99_ms, lag_events, dead_letters FROM es_stats;
SELECT handler, state, events_processed, dead_letters, parked FROM es_handler_status;

\echo '== 14. Read models: customers and accounts inline (built from the history at once), payments async'
SELECT es_register_projection('es_customers', mode => 'inline');
SELECT es_register_projection('es_accounts', mode => 'inline');
SELECT es_register_projection('es_payments');
SELECT customer_id, name, email, kyc_status, risk_rating, status, version FROM es_customers;
SELECT position AS last_position
  FROM es_append('Account', 'ACC001', 'ACCOUNT_BALANCE_UPDATED', '{"amount": "-25.50"}', 4) \gset
SELECT account_id, customer_id, account_type, currency, balance, status, version FROM es_accounts;
SELECT position AS last_position FROM es_append('Payment', 'PAY001', 'PAYMENT_REFUNDED', '{"amount": "20"}', 2) \gset
SELECT es_wait_for_projection('es_payments', :last_position, '30 seconds') AS payments_caught_up;
SELECT payment_id, amount, status, refunded_amount, version FROM es_payments ORDER BY 1;
SELECT name, mode, events_processed, lag_events, last_rebuild_events FROM es_projection_status ORDER BY 1;
