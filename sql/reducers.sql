-- Reducers: a registered fold per aggregate type (here: an account's balance, in numeric).
CREATE SCHEMA bank;
CREATE FUNCTION bank.account_reducer(state jsonb, event es_events) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    CASE event.event_type
    WHEN 'ACCOUNT_OPENED' THEN
        RETURN jsonb_build_object('customer_id', event.data->>'customer_id', 'currency', event.data->>'currency',
                                  'balance', 0, 'status', 'open', 'transactions', 0);
    WHEN 'ACCOUNT_BALANCE_UPDATED' THEN
        RETURN state || jsonb_build_object(
            'balance', (state->>'balance')::numeric + (event.data->>'amount')::numeric,
            'transactions', (state->>'transactions')::int + 1);
    WHEN 'ACCOUNT_CLOSED' THEN
        RETURN state || '{"status": "closed"}';
    ELSE
        RETURN state;
    END CASE;
END $$;

SELECT version FROM es_append_batch('Account', 'RED-A1', $$[
    {"event_type": "ACCOUNT_OPENED", "data": {"customer_id": "CUST001", "currency": "AUD"}},
    {"event_type": "ACCOUNT_BALANCE_UPDATED", "data": {"amount": "100.10"}},
    {"event_type": "ACCOUNT_BALANCE_UPDATED", "data": {"amount": "0.20"}},
    {"event_type": "ACCOUNT_BALANCE_UPDATED", "data": {"amount": "-50.05"}}
  ]$$, expected_version => 0);
-- The default reducer merges the payloads...
SELECT state FROM es_load_aggregate('RED-A1');
SELECT es_save_snapshot('RED-A1', 2);
SELECT version, reducer, usable FROM es_list_snapshots('RED-A1');
-- ...the registered one computes the balance, exactly.
SELECT es_register_reducer('Account', 'bank.account_reducer(jsonb, es_events)');
SELECT aggregate_type, reducer FROM es_reducers;
SELECT state, version, snapshot_version, events_applied FROM es_load_aggregate('RED-A1');
SELECT state->'balance' AS balance_at_3 FROM es_load_aggregate('RED-A1', at_version => 3);
-- The snapshot the default reducer made is stale now: never used, listed as such.
SELECT version, reducer, usable FROM es_list_snapshots('RED-A1');
SELECT count(*) FROM es_get_snapshot('RED-A1');
SELECT version, reducer FROM es_get_snapshot('RED-A1', include_stale => true);
-- Rebuilt, it is made by the registered reducer.
SELECT es_rebuild_snapshots(aggregate_id => 'RED-A1');
SELECT version, reducer, usable FROM es_list_snapshots('RED-A1');
SELECT state->'balance' AS balance, snapshot_version, events_applied FROM es_load_aggregate('RED-A1');

-- Changing the reducer's code also makes its snapshots stale.
CREATE OR REPLACE FUNCTION bank.account_reducer(state jsonb, event es_events) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    CASE event.event_type
    WHEN 'ACCOUNT_OPENED' THEN
        RETURN jsonb_build_object('currency', event.data->>'currency', 'balance', 0, 'status', 'open',
                                  'transactions', 0, 'customer_id', event.data->>'customer_id');
    WHEN 'ACCOUNT_BALANCE_UPDATED' THEN
        RETURN state || jsonb_build_object(
            'balance', (state->>'balance')::numeric + (event.data->>'amount')::numeric,
            'transactions', (state->>'transactions')::int + 1,
            'last_amount', (event.data->>'amount')::numeric);
    ELSE
        RETURN state;
    END CASE;
END $$;
SELECT version, usable FROM es_list_snapshots('RED-A1');
SELECT state, snapshot_version FROM es_load_aggregate('RED-A1');
SELECT es_rebuild_snapshots(aggregate_type => 'Account');
SELECT version, usable FROM es_list_snapshots('RED-A1');

-- Back to the default reducer.
SELECT es_register_reducer('Account', NULL);
SELECT count(*) FROM es_reducers;
SELECT state FROM es_load_aggregate('RED-A1');
SELECT es_register_reducer('Account', 'bank.account_reducer(jsonb, es_events)');

-- Reducers that cannot be.
CREATE FUNCTION bank.wrong_args(jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT $1';
CREATE FUNCTION bank.wrong_result(state jsonb, event es_events) RETURNS text LANGUAGE sql AS 'SELECT ''x''';
SELECT es_test.error_of($$SELECT es_register_reducer('Account', 'bank.wrong_args(jsonb)')$$);
SELECT es_test.error_of($$SELECT es_register_reducer('Account', 'bank.wrong_result(jsonb, es_events)')$$);
SELECT es_test.error_of($$SELECT es_register_reducer('Account', 'bank.no_such(jsonb, es_events)')$$);
SELECT es_test.error_of($$SELECT es_register_reducer('Bad Type', 'bank.account_reducer(jsonb, es_events)')$$);
-- A reducer must return a state, and must not call the event store.
CREATE FUNCTION bank.null_reducer(state jsonb, event es_events) RETURNS jsonb LANGUAGE sql AS 'SELECT NULL::jsonb';
CREATE FUNCTION bank.sneaky_reducer(state jsonb, event es_events) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM es_append('Loan', 'RED-SNEAK', 'LOAN_APPROVED', '{}');
    RETURN state;
END $$;
SELECT version FROM es_append('Loan', 'RED-L1', 'LOAN_APPLICATION_SUBMITTED', '{"amount": 1000}', 0);
SELECT es_register_reducer('Loan', 'bank.null_reducer(jsonb, es_events)');
SELECT es_test.error_of($$SELECT * FROM es_load_aggregate('RED-L1')$$);
SELECT es_register_reducer('Loan', 'bank.sneaky_reducer(jsonb, es_events)');
SELECT es_test.error_of($$SELECT * FROM es_load_aggregate('RED-L1')$$);
SELECT count(*) FROM es_events WHERE aggregate_id = 'RED-SNEAK';
SELECT es_register_reducer('Loan', NULL);
SELECT state FROM es_load_aggregate('RED-L1');
-- A reducer whose function was dropped: loads say so, rather than fold with
-- the default reducer in its place.
CREATE FUNCTION bank.dropped_reducer(state jsonb, event es_events) RETURNS jsonb LANGUAGE sql
    AS $$ SELECT state || jsonb_build_object('seen', event.version) $$;
SELECT es_register_reducer('Loan', 'bank.dropped_reducer(jsonb, es_events)');
SELECT state FROM es_load_aggregate('RED-L1');
DROP FUNCTION bank.dropped_reducer(jsonb, es_events);
SELECT regexp_replace(es_test.error_of($$SELECT * FROM es_load_aggregate('RED-L1')$$), 'function \d+', 'function N');
SELECT es_register_reducer('Loan', NULL);
SELECT state FROM es_load_aggregate('RED-L1');

-- Reducers run as the owners of their functions, never as the owner of the
-- event store: registering one takes owning it, and a reducer that tries to
-- use more rights than its owner has fails.
CREATE FUNCTION bank.private_reducer(state jsonb, event es_events) RETURNS jsonb LANGUAGE sql AS 'SELECT $1';
CREATE ROLE regress_es_reducer_admin;
GRANT EXECUTE ON FUNCTION es_register_reducer(text, regprocedure) TO regress_es_reducer_admin;
GRANT USAGE, CREATE ON SCHEMA bank TO regress_es_reducer_admin;
GRANT USAGE ON SCHEMA es_test TO regress_es_reducer_admin;
SET ROLE regress_es_reducer_admin;
SELECT es_test.error_of($$SELECT es_register_reducer('Loan', 'bank.private_reducer(jsonb, es_events)')$$);
CREATE FUNCTION bank.escalating_reducer(state jsonb, event es_events) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE 'ALTER ROLE regress_es_reducer_admin SUPERUSER';
    RETURN state;
END $$;
SELECT es_register_reducer('Loan', 'bank.escalating_reducer(jsonb, es_events)');
RESET ROLE;
SELECT es_test.error_of($$SELECT * FROM es_load_aggregate('RED-L1')$$);
SELECT rolsuper FROM pg_roles WHERE rolname = 'regress_es_reducer_admin';
SELECT es_register_reducer('Loan', NULL);
DROP FUNCTION bank.escalating_reducer(jsonb, es_events);
REVOKE ALL ON SCHEMA bank, es_test FROM regress_es_reducer_admin;
REVOKE ALL ON FUNCTION es_register_reducer(text, regprocedure) FROM regress_es_reducer_admin;
DROP ROLE regress_es_reducer_admin;
-- Leave the Account type with the default reducer for the tests that follow.
SELECT es_register_reducer('Account', NULL);
