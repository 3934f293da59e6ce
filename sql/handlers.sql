-- Event handlers: registered SQL functions the background worker calls once
-- per committed event, in commit order.
SELECT es_test.wait_until($$SELECT count(*) = 2 FROM pg_stat_activity
                             WHERE backend_type = 'ultracore_es delivery' AND datname = current_database()$$)
       AS workers_running;

CREATE TABLE es_test.handled (handler text, event_id text, aggregate_id text, version bigint, event_type text,
                              handled_by text, seq bigserial);
CREATE FUNCTION es_test.record(event es_events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO es_test.handled (handler, event_id, aggregate_id, version, event_type, handled_by)
    VALUES ('record', event.event_id, event.aggregate_id, event.version, event.event_type, current_user)
$$;
CREATE FUNCTION es_test.record_payments(event es_events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO es_test.handled (handler, event_id, aggregate_id, version, event_type, handled_by)
    VALUES ('payments', event.event_id, event.aggregate_id, event.version, event.event_type, current_user)
$$;

-- A handler starts at the present: what was appended before is not delivered.
SELECT version FROM es_append('Customer', 'H-BEFORE', 'CUSTOMER_CREATED', '{}', 0);
SELECT version FROM es_append('Payment', 'H-OLD-PAYMENT', 'PAYMENT_INITIATED', '{}', 0);
SELECT es_register_handler('record', 'es_test.record(es_events)');
SELECT es_register_handler(name => 'payments', function => 'es_test.record_payments(es_events)',
                           event_types => ARRAY['PAYMENT_INITIATED', 'PAYMENT_COMPLETED'],
                           max_retries => 5, backoff => '100 ms', replay_history => true);
SELECT handler, function, event_types, max_retries, backoff, builtin, state FROM es_handler_status
 WHERE NOT builtin ORDER BY 1;

-- Fifty events over five aggregates, in ten transactions.
DO $$
BEGIN
    FOR t IN 1..10 LOOP
        FOR a IN 1..5 LOOP
            PERFORM es_append('Payment', 'H-PAY-' || a,
                              CASE WHEN t = 1 THEN 'PAYMENT_INITIATED'
                                   WHEN t = 10 THEN 'PAYMENT_COMPLETED'
                                   ELSE 'PAYMENT_AUTHORIZED' END, jsonb_build_object('t', t));
        END LOOP;
        COMMIT;
    END LOOP;
END $$;
SELECT es_test.wait_until($$SELECT count(*) = 50 FROM es_test.handled WHERE handler = 'record'$$) AS all_delivered;
-- The filtered handler, replaying history, also receives the payments earlier tests appended.
SELECT es_test.wait_until($$SELECT count(*) = (SELECT count(*) FROM es_events
                                                WHERE event_type IN ('PAYMENT_INITIATED', 'PAYMENT_COMPLETED'))
                              FROM es_test.handled WHERE handler = 'payments'$$) AS filtered_delivered;
SELECT count(*) FILTER (WHERE aggregate_id LIKE 'H-PAY-%') AS new_payments,
       count(*) FILTER (WHERE aggregate_id NOT LIKE 'H-PAY-%') > 0 AS replayed_history,
       bool_and(event_type IN ('PAYMENT_INITIATED', 'PAYMENT_COMPLETED')) AS only_subscribed_types
  FROM es_test.handled WHERE handler = 'payments';
-- Once each, in each aggregate's version order, as the registering role.
SELECT handler, count(*) = count(DISTINCT event_id) AS once_each,
       bool_and(handled_by = current_user) AS as_registrant
  FROM es_test.handled GROUP BY 1 ORDER BY 1;
SELECT count(*) AS out_of_order
  FROM (SELECT handler, version, lag(version) OVER (PARTITION BY handler, aggregate_id ORDER BY seq) AS prev
          FROM es_test.handled) s
 WHERE version <= prev OR (handler = 'record' AND version <> prev + 1);
SELECT count(*) AS before_registration FROM es_test.handled WHERE aggregate_id = 'H-BEFORE';
-- Each applied event has its idempotency record, written with it.
SELECT consumer, count(*) = (SELECT count(*) FROM es_test.handled t WHERE t.handler = h.consumer) AS ledger_matches
  FROM es_handled h WHERE consumer IN ('record', 'payments') GROUP BY 1 ORDER BY 1;

-- Paused, a handler receives nothing; resumed, it catches up from its checkpoint.
SELECT es_pause_handler('record');
SELECT version FROM es_append('Customer', 'H-PAUSED', 'CUSTOMER_CREATED', '{}', 0);
SELECT es_test.delivery_passed();
SELECT count(*) AS while_paused FROM es_test.handled WHERE aggregate_id = 'H-PAUSED';
SELECT handler, state FROM es_handler_status WHERE handler = 'record';
SELECT es_resume_handler('record');
SELECT es_test.wait_until($$SELECT count(*) = 1 FROM es_test.handled WHERE aggregate_id = 'H-PAUSED'$$) AS caught_up;
-- Resumed from now, it skips what happened meanwhile.
SELECT es_pause_handler('record');
SELECT version FROM es_append('Customer', 'H-SKIPPED', 'CUSTOMER_CREATED', '{}', 0);
SELECT es_resume_handler('record', from_now => true);
SELECT version FROM es_append('Customer', 'H-AFTER', 'CUSTOMER_CREATED', '{}', 0);
SELECT es_test.wait_until($$SELECT count(*) = 1 FROM es_test.handled WHERE aggregate_id = 'H-AFTER'$$) AS delivered;
SELECT count(*) AS skipped FROM es_test.handled WHERE aggregate_id = 'H-SKIPPED';

-- Registering again reconfigures and keeps the checkpoint.
SELECT checkpoint_tx AS ck FROM es_consumers WHERE name = 'record' \gset
SELECT es_register_handler('record', 'es_test.record(es_events)', event_types => ARRAY['LOAN_APPROVED']);
SELECT event_types, checkpoint_tx >= :'ck'::xid8 AS checkpoint_kept FROM es_handler_status WHERE handler = 'record';

-- Errors.
CREATE FUNCTION es_test.not_a_handler(x int) RETURNS void LANGUAGE sql AS 'SELECT';
SELECT es_test.error_of($$SELECT es_register_handler('bad', 'es_test.not_a_handler(int)')$$);
SELECT es_test.error_of($$SELECT es_register_handler('bad', NULL)$$);
SELECT es_test.error_of($$SELECT es_register_handler('bad', 'es_test.record(es_events)', max_retries => -1)$$);
SELECT es_test.error_of($$SELECT es_register_handler('bad', 'es_test.record(es_events)', backoff => '-1 s')$$);
SELECT es_test.error_of($$SELECT es_register_handler('bad', 'es_test.record(es_events)', backoff => '2 days')$$);
-- A months part is refused: '1 mon -30 days' is nothing to interval comparison, 10.5 hours to date_part.
SELECT es_test.error_of($$SELECT es_register_handler('bad', 'es_test.record(es_events)', backoff => '1 mon -30 days')$$);
SELECT es_test.error_of($$SELECT es_register_handler('bad', 'es_test.record(es_events)', timeout => '1 mon -30 days 1 s')$$);
SELECT es_test.error_of($$SELECT es_register_handler('bad', 'es_test.record(es_events)', event_types => ARRAY['NOPE'])$$);
SELECT es_test.error_of($$SELECT es_register_handler('bad', 'es_test.record(es_events)', event_types => '{}')$$);
SELECT es_test.error_of($$SELECT es_register_handler('bad name', 'es_test.record(es_events)')$$);
SELECT es_test.error_of(format($$SELECT es_register_handler(%L, 'es_test.record(es_events)')$$, 'h' || repeat('x', 63)));
SELECT es_test.error_of($$SELECT es_pause_handler('nope')$$);
SELECT es_test.error_of($$SELECT es_resume_handler('nope')$$);
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT es_test.error_of($$SELECT es_resume_handler('record', from_now => true)$$);
ROLLBACK;
SELECT es_test.error_of($$SELECT es_unregister_handler('nope')$$);
SELECT es_test.error_of($$SELECT es_unregister_handler('es_audit_trail')$$);
-- A handler runs as its registrant, who must be allowed to execute it.
CREATE FUNCTION es_test.private_handler(event es_events) RETURNS void LANGUAGE sql AS 'SELECT';
REVOKE EXECUTE ON FUNCTION es_test.private_handler(es_events) FROM PUBLIC;
CREATE ROLE regress_es_handler_admin;
GRANT EXECUTE ON FUNCTION es_register_handler(text, regprocedure, text[], integer, interval, boolean, interval, integer) TO regress_es_handler_admin;
GRANT USAGE ON SCHEMA es_test TO regress_es_handler_admin;
SET ROLE regress_es_handler_admin;
SELECT es_test.error_of($$SELECT es_register_handler('private', 'es_test.private_handler(es_events)')$$);
RESET ROLE;
REVOKE ALL ON FUNCTION es_register_handler(text, regprocedure, text[], integer, interval, boolean, interval, integer) FROM regress_es_handler_admin;
REVOKE ALL ON SCHEMA es_test FROM regress_es_handler_admin;
DROP ROLE regress_es_handler_admin;

-- Unregistering removes the handler with its checkpoint and ledger.
SELECT es_unregister_handler('payments');
SELECT count(*) FROM es_consumers WHERE name = 'payments';
SELECT count(*) FROM es_handled WHERE consumer = 'payments';
