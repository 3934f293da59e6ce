-- Bad input: each refused with a clear error and its SQLSTATE, leaving nothing behind.
SELECT * FROM es_test.state() \gset before_

-- NULL or empty identifiers.
SELECT es_test.error_of($$SELECT es_append(NULL, 'A1', 'ACCOUNT_OPENED', '{}')$$);
SELECT es_test.error_of($$SELECT es_append('Account', NULL, 'ACCOUNT_OPENED', '{}')$$);
SELECT es_test.error_of($$SELECT es_append('Account', 'A1', NULL, '{}')$$);
SELECT es_test.error_of($$SELECT es_append('', 'A1', 'ACCOUNT_OPENED', '{}')$$);
SELECT es_test.error_of($$SELECT es_append('Account', '', 'ACCOUNT_OPENED', '{}')$$);
SELECT es_test.error_of($$SELECT es_append('Account', 'A1', '', '{}')$$);
SELECT es_test.error_of($$SELECT es_append('Account', 'A1', 'ACCOUNT_OPENED', '{}', event_id => '')$$);
SELECT es_test.error_of($$SELECT es_append('Account', 'A1', 'ACCOUNT_OPENED', '{}', causation_id => '')$$);
SELECT es_test.error_of($$SELECT es_append('Account', 'A1', 'ACCOUNT_OPENED', '{}', correlation_id => '')$$);

-- Data and metadata must be JSON objects.
SELECT es_test.error_of($$SELECT es_append('Account', 'A1', 'ACCOUNT_OPENED', NULL)$$);
SELECT es_test.error_of($$SELECT es_append('Account', 'A1', 'ACCOUNT_OPENED', '[1, 2]')$$);
SELECT es_test.error_of($$SELECT es_append('Account', 'A1', 'ACCOUNT_OPENED', '"text"')$$);
SELECT es_test.error_of($$SELECT es_append('Account', 'A1', 'ACCOUNT_OPENED', '42')$$);
SELECT es_test.error_of($$SELECT es_append('Account', 'A1', 'ACCOUNT_OPENED', 'null')$$);
SELECT es_test.error_of($$SELECT es_append('Account', 'A1', 'ACCOUNT_OPENED', '{}', metadata => 'true')$$);
-- The key under which the Kafka ingest records an event's origin is its own:
-- the mirror trusts it, so a writer cannot forge it.
SELECT es_test.error_of($$SELECT es_append('Account', 'A1', 'ACCOUNT_OPENED', '{}', metadata => '{"kafka_origin": {"source": "/crm"}}')$$);
SELECT es_test.error_of($$SELECT es_append_batch('Account', 'A1', '[{"event_type": "ACCOUNT_OPENED", "metadata": {"kafka_origin": {}}}]')$$);
SELECT es_test.error_of($$SELECT es_append_batch('Account', 'A1', '[{"event_type": "ACCOUNT_OPENED"}]', metadata => '{"kafka_origin": {}}')$$);
SELECT es_test.error_of($$SELECT es_append('Account', 'A1', 'ACCOUNT_OPENED', '{bad json')$$);

-- Versions out of range.
SELECT es_test.error_of($$SELECT es_append('Account', 'A1', 'ACCOUNT_OPENED', '{}', expected_version => -2)$$);
SELECT es_test.error_of($$SELECT es_append('Account', 'A1', 'ACCOUNT_OPENED', '{}', expected_version => -9223372036854775808)$$);
SELECT es_test.error_of($$SELECT es_append_batch('Account', 'A1', '[{"event_type": "ACCOUNT_OPENED"}]', -3)$$);

-- Overlong identifiers: ids up to 255 bytes, type names up to 128.
SELECT es_test.error_of(format($$SELECT es_append('Account', %L, 'ACCOUNT_OPENED', '{}')$$, repeat('a', 256)));
SELECT es_test.error_of(format($$SELECT es_append('Account', 'A1', 'ACCOUNT_OPENED', '{}', event_id => %L)$$, repeat('e', 300)));
SELECT es_test.error_of(format($$SELECT es_append('Account', 'A1', 'ACCOUNT_OPENED', '{}', correlation_id => %L)$$, repeat('é', 128)));
SELECT es_test.error_of(format($$SELECT es_append(%L, 'A1', 'ACCOUNT_OPENED', '{}')$$, 'A' || repeat('b', 128)));
SELECT es_test.error_of($$SELECT es_append('Not A Type', 'A1', 'ACCOUNT_OPENED', '{}')$$);
-- Exactly at the limits is fine.
SELECT version FROM es_append('Account', repeat('a', 255), 'ACCOUNT_OPENED', '{}', event_id => repeat('e', 255));

-- Events larger than ultracore_es.max_event_bytes.
SELECT * FROM es_test.state() \gset before_
SET ultracore_es.max_event_bytes = '1kB';
SELECT es_test.error_of(format($$SELECT es_append('Account', 'A1', 'ACCOUNT_OPENED', %L)$$,
                               jsonb_build_object('blob', repeat('x', 2000))));
SELECT es_test.error_of(format($$SELECT es_append('Account', 'A1', 'ACCOUNT_OPENED', '{}', metadata => %L)$$,
                               jsonb_build_object('blob', repeat('x', 2000))));
SELECT es_test.error_of(format($$SELECT es_append_batch('Account', 'A1', %L)$$,
    jsonb_build_array(jsonb_build_object('event_type', 'ACCOUNT_OPENED'),
                      jsonb_build_object('event_type', 'ACCOUNT_BALANCE_UPDATED', 'data',
                                         jsonb_build_object('blob', repeat('x', 2000))))));
SELECT version FROM es_append('Account', 'A1', 'ACCOUNT_OPENED', jsonb_build_object('small', repeat('x', 500)));
RESET ultracore_es.max_event_bytes;
SELECT events = :before_events + 1 AS only_the_small_one FROM es_test.state();
-- The limit is for superusers to set.
CREATE ROLE regress_es_test_nobody;
SET ROLE regress_es_test_nobody;
SET ultracore_es.max_event_bytes = '10MB';
RESET ROLE;
DROP ROLE regress_es_test_nobody;
-- A setting of the reserved prefix that does not exist is refused.
SET ultracore_es.no_such_setting = 1;

-- An event occurs at a finite time of the years 1 to 9999 (UTC), what RFC
-- 3339 (CloudEvents' ce_time) can say; in the server's time zone or not.
SET TIME ZONE 'Europe/Amsterdam';
SELECT es_test.error_of($$SELECT es_append('Customer', 'TIME-1', 'CUSTOMER_CREATED', '{}', occurred_at => 'infinity')$$);
SELECT es_test.error_of($$SELECT es_append('Customer', 'TIME-1', 'CUSTOMER_CREATED', '{}', occurred_at => '-infinity')$$);
SELECT es_test.error_of($$SELECT es_append('Customer', 'TIME-1', 'CUSTOMER_CREATED', '{}', occurred_at => '10000-01-01 01:30:00+01')$$);
-- (9999-12-31 23:30 UTC: in range, whatever the zone says)
SELECT es_test.error_of($$SELECT es_append('Customer', 'TIME-0', 'CUSTOMER_CREATED', '{}', occurred_at => '10000-01-01 00:30:00+01')$$);
SELECT es_test.error_of($$SELECT es_append('Customer', 'TIME-1', 'CUSTOMER_CREATED', '{}', occurred_at => '0044-03-15 12:00 BC')$$);
SELECT es_test.error_of($$SELECT es_append_batch('Customer', 'TIME-1', '[{"event_type": "CUSTOMER_CREATED", "occurred_at": "infinity"}]')$$);
-- The edges themselves are events' times.
SELECT version FROM es_append('Customer', 'TIME-1', 'CUSTOMER_CREATED', '{}', occurred_at => '0001-01-01 00:00:00+00');
SELECT version FROM es_append('Customer', 'TIME-1', 'CUSTOMER_UPDATED', '{}', occurred_at => '9999-12-31 23:59:59.999999+00');
RESET TIME ZONE;

-- Nothing was written by any refused call.
SELECT events = :before_events + 4 AS four_events_added FROM es_test.state();
