-- Idempotent appends: resending a stored event returns the original result.
SELECT * FROM es_append('Payment', 'PAY001', 'PAYMENT_INITIATED', '{"amount": 100}',
                        expected_version => 0, event_id => 'evt_001', correlation_id => 'req_12345') \gset orig_
SELECT * FROM es_test.state() \gset before_

-- The same event again: same result, nothing written (even with a stale expected version).
SELECT event_id, version, position = :orig_position AS same_position
  FROM es_append('Payment', 'PAY001', 'PAYMENT_INITIATED', '{"amount": 100}',
                 expected_version => 0, event_id => 'evt_001', correlation_id => 'req_12345');
SELECT version FROM es_append('Payment', 'PAY001', 'PAYMENT_AUTHORIZED', '{}', 1,
                              event_id => 'evt_002', causation_id => 'evt_001', correlation_id => 'req_12345');
SELECT event_id, version
  FROM es_append('Payment', 'PAY001', 'PAYMENT_INITIATED', '{"amount": 100}',
                 expected_version => 0, event_id => 'evt_001', correlation_id => 'req_12345');
SELECT event_id, version
  FROM es_append('Payment', 'PAY001', 'PAYMENT_INITIATED', '{"amount": 100}',
                 event_id => 'evt_001', correlation_id => 'req_12345');
SELECT events = :before_events + 1 AS only_evt_002_added FROM es_test.state();

-- The same id with other content is refused, naming what differs.
SELECT es_test.error_of($$SELECT es_append('Payment', 'PAY001', 'PAYMENT_INITIATED', '{"amount": 101}',
    event_id => 'evt_001', correlation_id => 'req_12345')$$);
SELECT es_test.error_of($$SELECT es_append('Payment', 'PAY002', 'PAYMENT_INITIATED', '{"amount": 100}',
    event_id => 'evt_001', correlation_id => 'req_12345')$$);
SELECT es_test.error_of($$SELECT es_append('Payment', 'PAY001', 'PAYMENT_COMPLETED', '{"amount": 100}',
    event_id => 'evt_001', correlation_id => 'req_12345')$$);
SELECT es_test.error_of($$SELECT es_append('Payment', 'PAY001', 'PAYMENT_INITIATED', '{"amount": 100}',
    event_id => 'evt_001')$$);
SELECT es_test.error_of($$SELECT es_append('Payment', 'PAY001', 'PAYMENT_INITIATED', '{"amount": 100}',
    event_id => 'evt_001', correlation_id => 'req_12345', metadata => '{"retry": true}')$$);
SELECT es_test.error_of($$SELECT es_append('Payment', 'PAY001', 'PAYMENT_INITIATED', '{"amount": 100}',
    event_id => 'evt_001', correlation_id => 'req_12345', occurred_at => '2020-01-01')$$);

-- A batch sent twice is stored once.
SELECT event_id, version FROM es_append_batch('Payment', 'PAY003', $$[
    {"event_type": "PAYMENT_INITIATED", "event_id": "evt_p1", "data": {"amount": 5}},
    {"event_type": "PAYMENT_AUTHORIZED", "event_id": "evt_p2"}]$$, expected_version => 0);
SELECT * FROM es_test.state() \gset before_
SELECT event_id, version FROM es_append_batch('Payment', 'PAY003', $$[
    {"event_type": "PAYMENT_INITIATED", "event_id": "evt_p1", "data": {"amount": 5}},
    {"event_type": "PAYMENT_AUTHORIZED", "event_id": "evt_p2"}]$$, expected_version => 0);
SELECT events = :before_events AS nothing_written, last_position = :before_last_position AS no_position_taken
  FROM es_test.state();
-- A batch that names some event ids only cannot be retried: its other
-- events get new ids at each call.  The hint says so.
SELECT count(*) FROM es_append_batch('Payment', 'PAY004', $$[
    {"event_type": "PAYMENT_INITIATED", "event_id": "evt_p4"},
    {"event_type": "PAYMENT_AUTHORIZED"}]$$, expected_version => 0);
DO $$
DECLARE
    hint text;
BEGIN
    PERFORM es_append_batch('Payment', 'PAY004', '[
        {"event_type": "PAYMENT_INITIATED", "event_id": "evt_p4"},
        {"event_type": "PAYMENT_AUTHORIZED"}]', expected_version => 0);
EXCEPTION WHEN unique_violation THEN
    GET STACKED DIAGNOSTICS hint = PG_EXCEPTION_HINT;
    RAISE NOTICE '%', hint;
END $$;
-- A batch that only partly matches an earlier one is refused.
SELECT es_test.error_of($$SELECT es_append_batch('Payment', 'PAY003', '[
    {"event_type": "PAYMENT_INITIATED", "event_id": "evt_p1", "data": {"amount": 5}},
    {"event_type": "PAYMENT_COMPLETED", "event_id": "evt_p3"}]')$$);
SELECT es_test.error_of($$SELECT es_append_batch('Payment', 'PAY003', '[
    {"event_type": "PAYMENT_AUTHORIZED", "event_id": "evt_p2"},
    {"event_type": "PAYMENT_INITIATED", "event_id": "evt_p1", "data": {"amount": 5}}]')$$);
SELECT es_test.error_of($$SELECT es_append_batch('Payment', 'PAY003', '[
    {"event_type": "PAYMENT_INITIATED", "event_id": "evt_p1", "data": {"amount": 5}},
    {"event_type": "PAYMENT_AUTHORIZED"}]')$$);
-- A single event that was part of a batch comes back as stored.
SELECT event_id, version FROM es_append('Payment', 'PAY003', 'PAYMENT_AUTHORIZED', event_id => 'evt_p2');

-- A resend without event ids cannot be told from a new append: the conflict
-- says so, and does not advise to append again blindly.
SELECT version FROM es_append_batch('Customer', 'IDEM-NOIDS', '[{"event_type": "CUSTOMER_CREATED", "data": {"a": 1}}]', 0);
SELECT version FROM es_append_batch('Customer', 'IDEM-NOIDS', '[{"event_type": "CUSTOMER_CREATED", "data": {"a": 1}}]', 0);
-- With ids, the same mistake is a different one: a new event on a stale version.
SELECT version FROM es_append('Customer', 'IDEM-NOIDS', 'CUSTOMER_UPDATED', '{}', 0, event_id => 'idem-noids-2');
