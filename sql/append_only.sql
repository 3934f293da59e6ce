-- The events table is append-only, for its owner and superusers too.
SELECT current_user = (SELECT relowner::regrole::text FROM pg_class WHERE relname = 'es_events') AS i_am_owner;
SELECT * FROM es_test.state() \gset before_
\set VERBOSITY default
UPDATE es_events SET data = '{}' WHERE aggregate_id = 'CUST001';
DELETE FROM es_events WHERE aggregate_id = 'CUST001';
TRUNCATE es_events;
-- Also when triggers are switched off for replication.
SET session_replication_role = replica;
DELETE FROM es_events;
RESET session_replication_role;
-- Even a statement that matches no row.
UPDATE es_events SET data = '{}' WHERE false;
SELECT events = :before_events AS untouched FROM es_test.state();
