-- The built-in handlers: audit trail, notification outbox, analytics counters.
-- Off until es_resume_handler switches one on (registering it, from the present).
SELECT handler, state, event_types IS NULL AS every_type FROM es_handler_status WHERE builtin ORDER BY 1;
SELECT es_resume_handler('es_audit_trail', from_now => true);
SELECT es_resume_handler('es_notification_outbox', from_now => true);
SELECT es_resume_handler('es_analytics_counters', from_now => true);

CREATE ROLE regress_es_teller;
GRANT EXECUTE ON FUNCTION es_append(text, text, text, jsonb, bigint, jsonb, text, text, text, timestamptz) TO regress_es_teller;
SET ROLE regress_es_teller;
SELECT version FROM es_append('Payment', 'BI-P1', 'PAYMENT_INITIATED', '{"amount": 10}', 0, event_id => 'bi-1');
SELECT version FROM es_append('Payment', 'BI-P1', 'PAYMENT_COMPLETED', '{}', 1, event_id => 'bi-2');
RESET ROLE;
SELECT version FROM es_append('Payment', 'BI-P2', 'PAYMENT_INITIATED', '{"amount": 20}', 0, event_id => 'bi-3');
SELECT version FROM es_append('Payment', 'BI-P2', 'PAYMENT_FAILED', '{"reason": "declined"}', 1, event_id => 'bi-4');
SELECT es_test.wait_until($$SELECT count(*) = 4 FROM es_audit_trail WHERE aggregate_id LIKE 'BI-%'$$) AS audited;
SELECT es_test.wait_until($$SELECT count(*) = 2 FROM es_notification_outbox WHERE aggregate_id LIKE 'BI-%'$$) AS notified;
SELECT es_test.wait_until($$SELECT coalesce(sum(events), 0) >= 4 FROM es_event_counts
                            WHERE event_type IN ('PAYMENT_INITIATED', 'PAYMENT_COMPLETED', 'PAYMENT_FAILED')$$) AS counted;

-- The audit trail: every event, the role that appended it and when.
SELECT event_id, event_type, aggregate_id, version, appended_by, recorded_at IS NOT NULL AS when_recorded
  FROM es_audit_trail WHERE aggregate_id LIKE 'BI-%' ORDER BY position;
-- The outbox: only the configured event types; senders claim rows without blocking each other.
SELECT event_id, event_type, status, payload->'data' AS data FROM es_notification_outbox
 WHERE aggregate_id LIKE 'BI-%' ORDER BY id;
BEGIN;
SELECT event_id, status, attempts FROM es_claim_notifications(1);
SELECT count(*) AS still_pending FROM es_notification_outbox WHERE status = 'pending' AND aggregate_id LIKE 'BI-%';
COMMIT;
SELECT id AS sent_id FROM es_notification_outbox WHERE event_id = 'bi-2' \gset
SELECT es_complete_notification(:sent_id);
SELECT es_complete_notification(:sent_id);
SELECT id AS failed_id FROM es_claim_notifications(5) \gset
SELECT es_complete_notification(:failed_id, error => 'smtp timeout');
SELECT event_id, status, attempts, last_error, sent_at IS NOT NULL AS sent FROM es_notification_outbox
 WHERE aggregate_id LIKE 'BI-%' ORDER BY id;
-- Reconfiguring the outbox's event types.
SELECT es_register_handler('es_notification_outbox', 'es_notification_handler(es_events)',
                           event_types => ARRAY['PAYMENT_INITIATED']);
SELECT version FROM es_append('Payment', 'BI-P3', 'PAYMENT_INITIATED', '{"amount": 30}', 0, event_id => 'bi-5');
SELECT es_test.wait_until($$SELECT count(*) = 1 FROM es_notification_outbox WHERE event_id = 'bi-5'$$) AS reconfigured;
-- The analytics counters: events per type per minute.
SELECT es_test.wait_until($$SELECT sum(events) = 5 FROM es_event_counts
                            WHERE event_type IN ('PAYMENT_INITIATED', 'PAYMENT_COMPLETED', 'PAYMENT_FAILED')$$) AS counted;
SELECT event_type, sum(events) FROM es_event_counts
 WHERE event_type IN ('PAYMENT_INITIATED', 'PAYMENT_COMPLETED', 'PAYMENT_FAILED') GROUP BY 1 ORDER BY 1;
SELECT bool_and(minute = date_trunc('minute', minute)) AS whole_minutes FROM es_event_counts;

SELECT es_pause_handler('es_audit_trail');
SELECT es_pause_handler('es_notification_outbox');
SELECT es_pause_handler('es_analytics_counters');
REVOKE ALL ON FUNCTION es_append(text, text, text, jsonb, bigint, jsonb, text, text, text, timestamptz) FROM regress_es_teller;
DROP ROLE regress_es_teller;
-- Unregistered, a built-in handler is off again; its table stays.
SELECT es_unregister_handler('es_analytics_counters');
SELECT handler, state FROM es_handler_status WHERE builtin ORDER BY 1;
SELECT count(*) > 0 AS counts_kept FROM es_event_counts;
