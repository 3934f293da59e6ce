-- Every function of the extension called with NULL in each argument in
-- turn (the others plausible), and every function that takes an event row
-- given one with each column NULL: each call returns or raises an error
-- with its SQLSTATE, and none may take the server down (a crash would end
-- this test with the connection lost).  Runs last: it registers and drops
-- things.
SET statement_timeout = '10s';
CREATE FUNCTION es_test.fuzz_noop(event es_events) RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION es_test.fuzz_reducer(state jsonb, event es_events) RETURNS jsonb LANGUAGE sql AS $$ SELECT state $$;
SELECT es_append('Account', 'FUZZ-1', 'ACCOUNT_OPENED', '{"currency": "EUR", "balance": 1}', 0) IS NOT NULL AS appended;

-- A plausible value of each argument type the API takes.
CREATE FUNCTION es_test.fuzz_value(t regtype, argname text) RETURNS text LANGUAGE sql AS $$
SELECT CASE
    WHEN t = 'text'::regtype AND argname IN ('aggregate_type') THEN quote_literal('Account')
    WHEN t = 'text'::regtype AND argname IN ('event_type') THEN quote_literal('ACCOUNT_OPENED')
    WHEN t = 'text'::regtype THEN quote_literal('FUZZ-1')
    WHEN t IN ('bigint'::regtype, 'integer'::regtype) THEN '1'
    WHEN t = 'boolean'::regtype THEN 'false'
    WHEN t = 'jsonb'::regtype AND argname = 'events' THEN quote_literal('[{"event_type": "ACCOUNT_BALANCE_UPDATED", "data": {}}]') || '::jsonb'
    WHEN t = 'jsonb'::regtype THEN quote_literal('{}') || '::jsonb'
    WHEN t = 'text[]'::regtype THEN 'ARRAY[''ACCOUNT_OPENED'']'
    WHEN t = 'timestamp with time zone'::regtype THEN 'now()'
    WHEN t = 'interval'::regtype THEN quote_literal('1 second') || '::interval'
    WHEN t = 'xid8'::regtype THEN quote_literal('0') || '::xid8'
    WHEN t = 'regprocedure'::regtype AND argname = 'function' THEN quote_literal('es_test.fuzz_noop(es_events)') || '::regprocedure'
    WHEN t = 'regprocedure'::regtype THEN 'NULL::regprocedure'
    WHEN t = 'es_events'::regtype THEN '(SELECT e FROM es_events e WHERE aggregate_id = ''FUZZ-1'' AND version = 1)'
    ELSE 'NULL::' || t::text
END
$$;

CREATE FUNCTION es_test.fuzz_call(fn regprocedure, args text[]) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('SELECT count(*) FROM %s(%s)', fn::oid::regproc, array_to_string(args, ', '));
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE;
END $$;

CREATE TEMP TABLE fuzz_functions AS
SELECT p.oid::regprocedure AS fn, p.proargtypes::regtype[] AS types, coalesce(p.proargnames, '{}') AS names,
       p.pronargs
  FROM pg_proc p
  JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
 WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'ultracore_es')
   AND p.pronargs > 0 AND p.prorettype <> 'trigger'::regtype;

-- NULL in each argument.  The result: ok, or the SQLSTATE of the error.
SELECT f.fn, i AS null_argument, f.names[i] AS name,
       es_test.fuzz_call(f.fn, array_agg(CASE WHEN j = i THEN 'NULL::' || f.types[j - 1]::text
                                              ELSE es_test.fuzz_value(f.types[j - 1], f.names[j]) END
                                         ORDER BY j)) AS outcome
  FROM fuzz_functions f, generate_series(1, f.pronargs) i, generate_series(1, f.pronargs) j
 GROUP BY f.fn, f.names, i
 ORDER BY f.fn::text, i;

-- A stored event's row with each column NULL, where a function takes a row.
SELECT f.fn, c.attname AS null_column,
       es_test.fuzz_call(f.fn, array_agg(CASE WHEN f.types[j - 1] = 'es_events'::regtype
                                              THEN format('jsonb_populate_record((SELECT e FROM es_events e WHERE aggregate_id = %L AND version = 1), jsonb_build_object(%L, NULL))',
                                                          'FUZZ-1', c.attname)
                                              ELSE es_test.fuzz_value(f.types[j - 1], f.names[j]) END
                                         ORDER BY j)) AS outcome
  FROM fuzz_functions f
  JOIN pg_attribute c ON c.attrelid = 'es_events'::regclass AND c.attnum > 0 AND NOT c.attisdropped,
       generate_series(1, f.pronargs) j
 WHERE 'es_events'::regtype = ANY (f.types)
 GROUP BY f.fn, c.attname, c.attnum
 ORDER BY f.fn::text, c.attnum;

-- The same with a row of nothing but NULLs, and with made-up rows.
SELECT f.fn, es_test.fuzz_call(f.fn, array_agg(CASE WHEN f.types[j - 1] = 'es_events'::regtype
                                                    THEN 'jsonb_populate_record(NULL::es_events, ''{}'')'
                                                    ELSE es_test.fuzz_value(f.types[j - 1], f.names[j]) END
                                               ORDER BY j)) AS all_null
  FROM fuzz_functions f, generate_series(1, f.pronargs) j
 WHERE 'es_events'::regtype = ANY (f.types)
 GROUP BY f.fn
 ORDER BY f.fn::text;

-- The built-in projection functions fold only what a delivery worker passes them:
-- neither a made-up row nor a stored one given by hand writes a read-model row.
SELECT es_test.error_of($$SELECT es_project_accounts(jsonb_populate_record(NULL::es_events, '{}'))$$);
SELECT es_test.error_of($$SELECT es_project_accounts(jsonb_populate_record(e, '{"data": [1, 2], "version": -5}'))
                            FROM es_events e WHERE aggregate_id = 'FUZZ-1' AND version = 1$$);
SELECT es_test.error_of($$SELECT es_project_accounts(e) FROM es_events e WHERE aggregate_id = 'FUZZ-1' AND version = 1$$);
SELECT count(*) AS rows_written FROM es_rm_accounts WHERE account_id = 'FUZZ-1';

RESET statement_timeout;
