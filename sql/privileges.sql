-- Least privilege: a role that can append and read, and nothing else.
CREATE ROLE regress_es_app LOGIN;
GRANT USAGE ON SCHEMA public TO regress_es_app;
GRANT EXECUTE ON FUNCTION
    es_append(text, text, text, jsonb, bigint, jsonb, text, text, text, timestamptz),
    es_append_batch(text, text, jsonb, bigint, jsonb, text, text),
    es_get_events(text, bigint, bigint, timestamptz, timestamptz),
    es_read_all(xid8, bigint, text, text[], integer),
    es_aggregate_version(text)
TO regress_es_app;
CREATE ROLE regress_es_stranger LOGIN;

SET ROLE regress_es_app;
SELECT version FROM es_append('Customer', 'PRIV-1', 'CUSTOMER_CREATED', '{"name": "Priv"}', 0);
SELECT version FROM es_append_batch('Customer', 'PRIV-1', '[{"event_type": "CUSTOMER_UPDATED"}]', 1);
SELECT version, appended_by FROM es_get_events('PRIV-1');
SELECT count(*) > 0 AS reads_all FROM es_read_all();
SELECT es_aggregate_version('PRIV-1');
-- Direct writes to the tables are refused...
INSERT INTO es_events (event_id, event_type, aggregate_type, aggregate_id, version, tx_id, occurred_at,
                       recorded_at, data, metadata, schema_version, appended_by)
VALUES ('forged', 'CUSTOMER_CREATED', 'Customer', 'PRIV-1', 99, '1', now(), now(), '{}', '{}', 1, 'x');
INSERT INTO es_aggregates VALUES ('PRIV-2', 'Customer', now());
UPDATE es_events SET data = '{}';
DELETE FROM es_aggregates;
SELECT nextval('es_events_position_seq');
-- ...and so are direct reads, and what was not granted.
SELECT count(*) FROM es_events;
SELECT es_register_event_type('PRIV_TYPE');
SELECT * FROM es_causation_chain('x');
RESET ROLE;

-- A role without grants can do nothing at all.
SET ROLE regress_es_stranger;
SELECT es_append('Customer', 'PRIV-3', 'CUSTOMER_CREATED', '{}');
SELECT * FROM es_get_events('PRIV-1');
RESET ROLE;
SELECT count(*) FROM es_aggregates WHERE aggregate_id IN ('PRIV-2', 'PRIV-3');

-- Reading the tables directly takes an explicit grant.
GRANT SELECT ON es_events, es_aggregate_versions TO regress_es_app;
SET ROLE regress_es_app;
SELECT count(*) FROM es_events WHERE aggregate_id = 'PRIV-1';
SELECT version FROM es_aggregate_versions WHERE aggregate_id = 'PRIV-1';
RESET ROLE;

-- The functions' queries resist a hostile search_path: an operator planted in
-- a schema searched before pg_catalog is never used.
CREATE SCHEMA es_hostile;
CREATE FUNCTION es_hostile.text_eq_trap(text, text) RETURNS boolean
    LANGUAGE sql AS $$ SELECT false $$;
CREATE OPERATOR es_hostile.= (LEFTARG = text, RIGHTARG = text, FUNCTION = es_hostile.text_eq_trap);
SET search_path = es_hostile, public, pg_catalog;
SELECT version FROM public.es_append('Customer', 'PRIV-1', 'CUSTOMER_UPDATED', '{}', 2);
SELECT count(*) FROM public.es_get_events('PRIV-1');
RESET search_path;
DROP SCHEMA es_hostile CASCADE;

REVOKE ALL ON es_events, es_aggregate_versions FROM regress_es_app;
REVOKE ALL ON FUNCTION
    es_append(text, text, text, jsonb, bigint, jsonb, text, text, text, timestamptz),
    es_append_batch(text, text, jsonb, bigint, jsonb, text, text),
    es_get_events(text, bigint, bigint, timestamptz, timestamptz),
    es_read_all(xid8, bigint, text, text[], integer),
    es_aggregate_version(text)
FROM regress_es_app;
REVOKE USAGE ON SCHEMA public FROM regress_es_app;
DROP ROLE regress_es_app;
DROP ROLE regress_es_stranger;
