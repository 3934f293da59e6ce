-- Access in one call: es_grant_access(role, reader | writer | operator), and
-- pg_monitor for monitoring.  Each role can do what its access says, and
-- nothing more.
CREATE ROLE regress_acc_reader;
CREATE ROLE regress_acc_writer;
CREATE ROLE regress_acc_operator;
CREATE ROLE regress_acc_monitor IN ROLE pg_monitor;
SELECT es_grant_access('regress_acc_reader', 'reader');
SELECT es_grant_access('regress_acc_writer', 'writer');
SELECT es_grant_access('regress_acc_operator', 'operator');
-- Idempotent.
SELECT es_grant_access('regress_acc_writer', 'writer');
SELECT kind, count(*) FROM es_access_privileges('writer') GROUP BY 1 ORDER BY 1;

CREATE FUNCTION es_test.acc_seen(event es_events) RETURNS void LANGUAGE sql AS 'SELECT';
SELECT es_register_handler('acc_seen', 'es_test.acc_seen(es_events)');
SELECT version FROM es_append('Customer', 'ACC-ACCESS', 'CUSTOMER_CREATED', '{"name": "Ada"}', 0);

\set VERBOSITY sqlstate
SET ROLE regress_acc_reader;
SELECT count(*) FROM es_get_events('ACC-ACCESS');
SELECT count(*) > 0 AS reads_all FROM es_read_all(after_tx_id => 0);
SELECT version FROM es_load_aggregate('ACC-ACCESS');
SELECT es_aggregate_version('ACC-ACCESS');
SELECT count(*) >= 0 AS reads_customers FROM es_customers;
SELECT es_append('Customer', 'ACC-ACCESS', 'CUSTOMER_UPDATED', '{}', 1);
SELECT count(*) FROM es_stats;
SELECT count(*) FROM es_health();
SELECT count(*) FROM es_events;
RESET ROLE;

SET ROLE regress_acc_writer;
SELECT version FROM es_append('Customer', 'ACC-ACCESS', 'CUSTOMER_UPDATED', '{}', 1);
SELECT version FROM es_append_batch('Customer', 'ACC-ACCESS', '[{"event_type": "CUSTOMER_UPDATED"}]', 2);
SELECT count(*) FROM es_get_events('ACC-ACCESS');
SELECT es_register_event_type('ACC_TYPE');
SELECT es_pause_handler('acc_seen');
SELECT count(*) FROM es_health();
RESET ROLE;

SET ROLE regress_acc_operator;
SELECT count(*) > 0 AS sees_health FROM es_health();
SELECT count(*) > 0 AS sees_stats FROM es_stats;
SELECT count(*) >= 0 AS sees_kafka FROM es_kafka_status;
SELECT count(*) > 0 AS sees_handlers FROM es_handler_status;
SELECT count(*) >= 0 AS sees_dead_letters FROM es_dead_letter_queue;
SELECT es_pause_handler('acc_seen');
SELECT es_resume_handler('acc_seen');
SELECT es_append('Customer', 'ACC-ACCESS', 'CUSTOMER_UPDATED', '{}', 3);
SELECT count(*) FROM es_get_events('ACC-ACCESS');
SELECT es_register_handler('acc_other', 'es_test.acc_seen(es_events)');
RESET ROLE;

SET ROLE regress_acc_monitor;
SELECT count(*) > 0 AS sees_health FROM es_health();
SELECT count(*) > 0 AS sees_stats FROM es_stats;
SELECT count(*) > 0 AS sees_store FROM es_store_stats;
SELECT count(*) >= 0 AS sees_kafka FROM es_kafka_status;
SELECT count(*) > 0 AS sees_workers FROM es_worker_state();
SELECT es_pause_handler('acc_seen');
SELECT count(*) FROM es_get_events('ACC-ACCESS');
RESET ROLE;

-- Only the extension's owner (or a superuser) grants, even with EXECUTE.
GRANT EXECUTE ON FUNCTION es_grant_access(regrole, text), es_change_access(regrole, text, boolean) TO regress_acc_writer;
\set VERBOSITY default
SET ROLE regress_acc_writer;
SELECT es_grant_access('regress_acc_writer', 'operator');
RESET ROLE;
REVOKE EXECUTE ON FUNCTION es_grant_access(regrole, text), es_change_access(regrole, text, boolean) FROM regress_acc_writer;
SELECT es_grant_access('regress_acc_reader', 'admin');
SELECT es_grant_access(NULL, 'reader');

-- Revoked, the reader reads nothing.
SELECT es_revoke_access('regress_acc_reader', 'reader');
SELECT es_revoke_access('regress_acc_reader', 'reader');
\set VERBOSITY sqlstate
SET ROLE regress_acc_reader;
SELECT count(*) FROM es_get_events('ACC-ACCESS');
SELECT count(*) FROM es_customers;
RESET ROLE;
\set VERBOSITY default

-- Revoking writer takes back the appends, not the reads.
SELECT es_revoke_access('regress_acc_writer', 'writer');
\set VERBOSITY sqlstate
SET ROLE regress_acc_writer;
SELECT es_append('Customer', 'ACC-ACCESS', 'CUSTOMER_UPDATED', '{}', 3);
SELECT count(*) FROM es_get_events('ACC-ACCESS');
RESET ROLE;
\set VERBOSITY default

SELECT es_unregister_handler('acc_seen');
SELECT es_revoke_access('regress_acc_writer', 'reader');
SELECT es_revoke_access('regress_acc_operator', 'operator');
REVOKE ALL ON SCHEMA public FROM regress_acc_reader, regress_acc_writer, regress_acc_operator;
DROP ROLE regress_acc_reader, regress_acc_writer, regress_acc_operator, regress_acc_monitor;
