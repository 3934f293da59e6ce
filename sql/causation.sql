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
