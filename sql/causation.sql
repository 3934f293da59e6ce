-- Causation chains and correlated events (the guide's causation_id / correlation_id).
SELECT version FROM es_append('Payment', 'PAY100', 'PAYMENT_INITIATED', '{"amount": 100}', 0,
                              event_id => 'evt_c1', causation_id => 'cmd_pay', correlation_id => 'req_777');
SELECT version FROM es_append('Payment', 'PAY100', 'PAYMENT_AUTHORIZED', '{}', 1,
                              event_id => 'evt_c2', causation_id => 'evt_c1', correlation_id => 'req_777');
SELECT version FROM es_append('Account', 'ACC-C', 'ACCOUNT_BALANCE_UPDATED', '{"balance": -100}',
                              event_id => 'evt_c3', causation_id => 'evt_c2', correlation_id => 'req_777');
SELECT version FROM es_append('Payment', 'PAY100', 'PAYMENT_COMPLETED', '{}', 2,
                              event_id => 'evt_c4', causation_id => 'evt_c3', correlation_id => 'req_777');
SELECT version FROM es_append('Payment', 'PAY101', 'PAYMENT_INITIATED', '{}', 0,
                              event_id => 'evt_other', correlation_id => 'req_888');

-- The event and its ancestors, root cause first; the walk ends at a command id.
SELECT event_id, event_type, causation_id FROM es_causation_chain('evt_c4');
SELECT event_id FROM es_causation_chain('evt_c1');
SELECT count(*) FROM es_causation_chain('evt_nope');

-- Caller-supplied ids can form a cycle; the walk stops.
SELECT version FROM es_append('Payment', 'PAY102', 'PAYMENT_INITIATED', '{}', 0,
                              event_id => 'evt_x1', causation_id => 'evt_x2');
SELECT version FROM es_append('Payment', 'PAY102', 'PAYMENT_FAILED', '{}', 1,
                              event_id => 'evt_x2', causation_id => 'evt_x1');
SELECT event_id FROM es_causation_chain('evt_x2');

-- Everything of one request, in order, across aggregates.
SELECT event_id, aggregate_id, version FROM es_correlated_events('req_777');
SELECT count(*) FROM es_correlated_events('req_none');

SELECT es_test.error_of($$SELECT * FROM es_causation_chain(NULL)$$);
SELECT es_test.error_of($$SELECT * FROM es_correlated_events('')$$);

-- W3C trace context: the session's traceparent (and tracestate), which an
-- instrumented client sets per transaction, goes into the metadata of each
-- event that does not carry its own.
BEGIN;
SET LOCAL ultracore_es.traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
SET LOCAL ultracore_es.tracestate = 'bank=teller-7';
SELECT version FROM es_append('Customer', 'TRACE-1', 'CUSTOMER_CREATED', '{}', 0, event_id => 'trace-1');
SELECT version FROM es_append('Customer', 'TRACE-1', 'CUSTOMER_UPDATED', '{}', 1,
                              metadata => '{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}');
COMMIT;
SELECT version, metadata FROM es_get_events('TRACE-1');
SELECT version FROM es_append('Customer', 'TRACE-1', 'CUSTOMER_UPDATED', '{}', 2);
SELECT metadata FROM es_get_events('TRACE-1', from_version => 3);
-- A retry runs in a span of its own: still the same event, absorbed.
BEGIN;
SET LOCAL ultracore_es.traceparent = '00-11111111111111111111111111111111-2222222222222222-01';
SELECT version, position = (SELECT position FROM es_events WHERE event_id = 'trace-1') AS same
  FROM es_append('Customer', 'TRACE-1', 'CUSTOMER_CREATED', '{}', 0, event_id => 'trace-1');
COMMIT;
-- Not a traceparent.
SET ultracore_es.traceparent = 'trace me';
SET ultracore_es.traceparent = '00-00000000000000000000000000000000-00f067aa0ba902b7-01';
SET ultracore_es.traceparent = '00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01';
