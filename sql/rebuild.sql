-- Rebuilding the read models: drop their rows, rebuild from the store, and
-- get the same rows back (the models of read_models.sql).
CREATE TABLE es_test.rm_before AS
SELECT 'customers' AS model, to_jsonb(c) - 'last_position' AS r FROM es_customers c
UNION ALL SELECT 'accounts', to_jsonb(a) - 'last_position' FROM es_accounts a
UNION ALL SELECT 'transactions', to_jsonb(t) - 'last_position' FROM es_transactions t
UNION ALL SELECT 'payments', to_jsonb(p) - 'last_position' FROM es_payments p
UNION ALL SELECT 'loans', to_jsonb(l) - 'last_position' FROM es_loans l;
CREATE FUNCTION es_test.rm_now() RETURNS TABLE (model text, r jsonb) LANGUAGE sql AS $$
SELECT 'customers', to_jsonb(c) - 'last_position' FROM es_customers c
UNION ALL SELECT 'accounts', to_jsonb(a) - 'last_position' FROM es_accounts a
UNION ALL SELECT 'transactions', to_jsonb(t) - 'last_position' FROM es_transactions t
UNION ALL SELECT 'payments', to_jsonb(p) - 'last_position' FROM es_payments p
UNION ALL SELECT 'loans', to_jsonb(l) - 'last_position' FROM es_loans l
$$;
CREATE FUNCTION es_test.rm_differences() RETURNS bigint LANGUAGE sql AS $$
SELECT count(*) FROM ((TABLE es_test.rm_before EXCEPT SELECT * FROM es_test.rm_now())
                      UNION ALL (SELECT * FROM es_test.rm_now() EXCEPT TABLE es_test.rm_before)) d
$$;
SELECT model, count(*) FROM es_test.rm_before GROUP BY 1 ORDER BY 1;

-- Everything dropped, then rebuilt, projection by projection.
DELETE FROM es_rm_customers;
DELETE FROM es_rm_accounts;
DELETE FROM es_rm_transactions;
DELETE FROM es_rm_payments;
DELETE FROM es_rm_loans;
SELECT count(*) AS rows_left FROM es_test.rm_now();
SELECT name, es_rebuild_projection(name) AS events FROM es_projection_status ORDER BY name;
SELECT es_test.rm_differences() AS differences;
SELECT name, last_rebuild_events, last_rebuild_duration IS NOT NULL AS timed FROM es_projection_status ORDER BY name;

-- One aggregate, inline and async: a damaged row is repaired, the others untouched.
UPDATE es_rm_accounts SET balance = 0 WHERE account_id = 'RM-A2';
UPDATE es_rm_payments SET status = 'lost' WHERE payment_id = 'RM-P1';
DELETE FROM es_rm_loans WHERE loan_id = 'RM-L1';
SELECT es_test.rm_differences() AS damaged;
SELECT es_rebuild_projection('es_accounts', 'RM-A2'), es_rebuild_projection('es_payments', 'RM-P1'),
       es_rebuild_projection('es_loans', 'RM-L1');
SELECT es_test.rm_differences() AS differences;
-- An aggregate without events: its rows go, nothing comes back.
SELECT es_rebuild_projection('es_accounts', 'RM-NOBODY');

-- The async consumer goes on after a rebuild of everything.
SELECT es_rebuild_projection('es_payments');
SELECT position AS last_position FROM es_append('Payment', 'RM-P3', 'PAYMENT_INITIATED', '{"amount": 1}', 0) \gset
SELECT es_wait_for_projection('es_payments', :last_position, '30 seconds') AS caught_up;
SELECT payment_id, status, version FROM es_payments WHERE payment_id = 'RM-P3';
