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

-- A role that is neither owner nor superuser, granted every privilege on the
-- table, changes nothing either: the triggers refuse its statements, and
-- switching them off or rewriting statements takes owning the table.
CREATE ROLE regress_es_intruder;
GRANT USAGE ON SCHEMA public TO regress_es_intruder;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON es_events TO regress_es_intruder;
SET ROLE regress_es_intruder;
\set VERBOSITY sqlstate
UPDATE es_events SET data = '{}' WHERE aggregate_id = 'CUST001';
DELETE FROM es_events WHERE aggregate_id = 'CUST001';
TRUNCATE es_events;
ALTER TABLE es_events DISABLE TRIGGER ALL;
ALTER TABLE es_events DISABLE TRIGGER es_events_append_only;
CREATE RULE rewrite AS ON DELETE TO es_events DO INSTEAD NOTHING;
SET session_replication_role = replica;
RESET ROLE;
\set VERBOSITY default
REVOKE ALL ON es_events FROM regress_es_intruder;
REVOKE ALL ON SCHEMA public FROM regress_es_intruder;
DROP ROLE regress_es_intruder;
SELECT events = :before_events AS untouched FROM es_test.state();

-- What the store cannot refuse: the owner (a superuser) can switch the
-- triggers off, and a superuser can do anything to the files.  Such a change
-- is not prevented (README, "Append-only": what is refused, and to whom).
BEGIN;
ALTER TABLE es_events DISABLE TRIGGER ALL;
DELETE FROM es_events WHERE aggregate_id = 'CUST001';
SELECT count(*) AS cust001_left FROM es_events WHERE aggregate_id = 'CUST001';
ROLLBACK;
SELECT events = :before_events AS untouched FROM es_test.state();
