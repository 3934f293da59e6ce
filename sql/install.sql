-- Installation: the extension, its objects, their documentation and privileges.
SHOW shared_preload_libraries;
-- As a database whose new tables and sequences PUBLIC may use by default
-- (functions it may execute by default anyway): the extension's own
-- REVOKEs are what keeps PUBLIC out (checked below).
ALTER DEFAULT PRIVILEGES GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO PUBLIC;
ALTER DEFAULT PRIVILEGES GRANT USAGE, SELECT ON SEQUENCES TO PUBLIC;
CREATE EXTENSION ultracore_es;
ALTER DEFAULT PRIVILEGES REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM PUBLIC;
ALTER DEFAULT PRIVILEGES REVOKE USAGE, SELECT ON SEQUENCES FROM PUBLIC;
SHOW ultracore_es.max_event_bytes;
SHOW ultracore_es.database;

-- Helpers for the other test files (they run in this database, in order).
CREATE SCHEMA es_test;
-- The error a statement raises, as 'SQLSTATE: message | detail'.
CREATE FUNCTION es_test.error_of(stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    state text; msg text; det text;
BEGIN
    EXECUTE stmt;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL;
    RETURN state || ': ' || msg || coalesce(nullif(' | ' || det, ' | '), '');
END $$;
-- Wait (up to a minute) until a query over the worker's effects returns true.
CREATE FUNCTION es_test.wait_until(query text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    done boolean;
BEGIN
    FOR i IN 1..1200 LOOP
        EXECUTE query INTO done;
        IF done THEN
            RETURN true;
        END IF;
        PERFORM pg_sleep(0.05);
        PERFORM pg_stat_clear_snapshot();  -- pg_stat_activity is cached per transaction
    END LOOP;
    RETURN false;
END $$;
-- Wait (up to a minute) until every delivery worker has looked twice more
-- than when called: the proof an absence check needs that the workers
-- passed the point (false with no worker, or one that does not loop).
CREATE FUNCTION es_test.delivery_passed() RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    before jsonb;
BEGIN
    SELECT jsonb_object_agg(member, jsonb_build_array(pid, passes)) INTO before
      FROM es_worker_state() WHERE kind = 'delivery';
    FOR i IN 1..1200 LOOP
        -- (a worker started again since is a new process: it looked after the call)
        IF (SELECT bool_and(passes >= (before->member::text->>1)::bigint + 2
                            OR pid IS DISTINCT FROM (before->member::text->>0)::int)
              FROM es_worker_state() WHERE kind = 'delivery') THEN
            RETURN true;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN false;
END $$;
-- What the store holds: a refused call must leave all three unchanged (the
-- sequence is not transactional, so a burned position shows here too).
CREATE FUNCTION es_test.state(OUT events bigint, OUT aggregates bigint, OUT last_position bigint)
LANGUAGE sql AS $$
    SELECT (SELECT count(*) FROM es_events), (SELECT count(*) FROM es_aggregates),
           (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM es_events_position_seq)
$$;

-- Every function, table, view and type of the extension, with its comment.
SELECT pg_describe_object(classid, objid, 0) AS object,
       obj_description(objid, classid::regclass::text) IS NOT NULL AS documented
  FROM pg_depend
 WHERE refclassid = 'pg_extension'::regclass
   AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'ultracore_es')
   AND deptype = 'e'
 ORDER BY 1;

-- Nothing is granted to PUBLIC: neither the tables nor the functions.
SELECT p.proname, has_function_privilege('public', p.oid, 'EXECUTE') AS public_can_execute
  FROM pg_proc p
  JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
 WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'ultracore_es')
 ORDER BY 1;
SELECT c.relname, has_table_privilege('public', c.oid, 'SELECT') AS public_select,
       has_table_privilege('public', c.oid, 'INSERT') AS public_insert,
       c.relkind = 'S' AND has_sequence_privilege('public', c.oid, 'USAGE') AS public_sequence
  FROM pg_class c
  JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
 WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'ultracore_es')
 ORDER BY 1;

SELECT * FROM es_test.state();
-- The store records the cluster it lives in at the first append.
SELECT count(*) FROM es_clusters;
SELECT es_commit_horizon() > '0' AS has_horizon;
SELECT version FROM es_append('System', 'install-check', 'SYSTEM_STARTED', '{}', 0);
SELECT system_identifier = (SELECT system_identifier FROM pg_control_system()) AS this_cluster,
       xid_offset
  FROM es_clusters;
