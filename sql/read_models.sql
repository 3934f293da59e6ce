-- The guide's five read models, after the guide's flows.  Accounts, customers
-- and loans inline (consistent with the append); transactions and payments
-- async (the worker), read with es_wait_for_projection.
SELECT es_register_projection('es_customers', mode => 'inline');
SELECT es_register_projection('es_accounts', mode => 'inline');
SELECT es_register_projection('es_loans', mode => 'inline');
SELECT es_register_projection('es_transactions');
SELECT es_register_projection('es_payments');
SELECT name, mode, builtin, state FROM es_projection_status ORDER BY name;

-- A customer: onboarding, KYC, risk, address, deactivation and back.
SELECT version FROM es_append('Customer', 'RM-C1', 'CUSTOMER_CREATED',
    '{"name": "Jane Citizen", "email": "jane@example.com", "phone": "+61 400 000 000"}', 0,
    occurred_at => '2026-01-05 09:00+00');
SELECT version FROM es_append('Customer', 'RM-C1', 'CUSTOMER_UPDATED', '{"email": "jane.citizen@example.com"}', 1,
    occurred_at => '2026-01-06 09:00+00');
SELECT * FROM es_customers WHERE customer_id = 'RM-C1';
SELECT version FROM es_append('Customer', 'RM-C1', 'CUSTOMER_KYC_COMPLETED', '{}', 2);
SELECT version FROM es_append('Customer', 'RM-C1', 'CUSTOMER_RISK_ASSESSED', '{"risk_rating": "low"}', 3);
SELECT version FROM es_append('Customer', 'RM-C1', 'CUSTOMER_ADDRESS_CHANGED',
    '{"address": {"street": "1 George St", "city": "Sydney"}}', 4);
SELECT version FROM es_append('Customer', 'RM-C1', 'CUSTOMER_DEACTIVATED', '{}', 5);
SELECT customer_id, name, email, kyc_status, risk_rating, status, address, version FROM es_customers
 WHERE customer_id = 'RM-C1';
SELECT version FROM es_append('Customer', 'RM-C1', 'CUSTOMER_REACTIVATED', '{}', 6);
SELECT version FROM es_append('Customer', 'RM-C2', 'CUSTOMER_CREATED',
    '{"name": "Sam", "kyc_status": "enhanced_due_diligence", "risk_rating": "high"}', 0);
SELECT customer_id, name, kyc_status, risk_rating, status, version FROM es_customers
 WHERE customer_id LIKE 'RM-%' ORDER BY 1;

-- An account: opening, balance updates (a new balance, and signed changes,
-- exact in numeric), limits, freeze, close.
SELECT version FROM es_append('Account', 'RM-A1', 'ACCOUNT_OPENED',
    '{"customer_id": "RM-C1", "account_type": "savings", "currency": "AUD", "balance": "100.00",
      "daily_limit": 1000}', 0);
SELECT version FROM es_append('Account', 'RM-A1', 'ACCOUNT_BALANCE_UPDATED', '{"amount": "0.10"}', 1);
SELECT version FROM es_append('Account', 'RM-A1', 'ACCOUNT_BALANCE_UPDATED', '{"amount": 0.20}', 2);
SELECT version FROM es_append('Account', 'RM-A1', 'ACCOUNT_BALANCE_UPDATED', '{"amount": "-50.05"}', 3);
SELECT balance, balance = 50.25 AS exact FROM es_accounts WHERE account_id = 'RM-A1';
SELECT version FROM es_append('Account', 'RM-A1', 'ACCOUNT_BALANCE_UPDATED', '{"balance": "1234567890123.45"}', 4);
SELECT version FROM es_append('Account', 'RM-A1', 'ACCOUNT_LIMIT_CHANGED',
    '{"daily_limit": "2500.00", "overdraft_limit": 500}', 5);
SELECT version FROM es_append('Account', 'RM-A1', 'ACCOUNT_FROZEN', '{"reason": "fraud check"}', 6);
SELECT account_id, customer_id, account_type, currency, balance, daily_limit, overdraft_limit, status, version
  FROM es_accounts WHERE account_id = 'RM-A1';
SELECT version FROM es_append('Account', 'RM-A1', 'ACCOUNT_UNFROZEN', '{}', 7);
SELECT version FROM es_append('Account', 'RM-A1', 'ACCOUNT_STATUS_CHANGED', '{"status": "dormant"}', 8);
SELECT status FROM es_accounts WHERE account_id = 'RM-A1';
SELECT version FROM es_append('Account', 'RM-A1', 'ACCOUNT_CLOSED', '{}', 9, occurred_at => '2026-03-01 12:00+00');
SELECT status, closed_at, version FROM es_accounts WHERE account_id = 'RM-A1';
-- A batch: one row write for the whole batch, the same result as one by one.
SELECT count(*) FROM es_append_batch('Account', 'RM-A2',
    (SELECT jsonb_build_array(jsonb_build_object('event_type', 'ACCOUNT_OPENED',
                                                 'data', jsonb_build_object('currency', 'EUR')))
            || jsonb_agg(jsonb_build_object('event_type', 'ACCOUNT_BALANCE_UPDATED',
                                            'data', jsonb_build_object('amount', g || '.01')))
       FROM generate_series(1, 100) g), 0);
SELECT balance, version, last_position = (SELECT max(position) FROM es_events WHERE aggregate_id = 'RM-A2') AS last
  FROM es_accounts WHERE account_id = 'RM-A2';

-- Transactions on the account: created, posted, settled; one reversed; one failed.
SELECT version FROM es_append('Transaction', 'RM-T1', 'TRANSACTION_CREATED',
    '{"account_id": "RM-A2", "amount": "42.50", "currency": "EUR", "direction": "debit", "description": "groceries"}', 0);
SELECT version FROM es_append('Transaction', 'RM-T1', 'TRANSACTION_POSTED', '{}', 1);
SELECT version FROM es_append('Transaction', 'RM-T1', 'TRANSACTION_SETTLED', '{}', 2);
SELECT version FROM es_append('Transaction', 'RM-T2', 'TRANSACTION_CREATED',
    '{"account_id": "RM-A2", "amount": 1000, "currency": "EUR", "direction": "credit"}', 0);
SELECT version FROM es_append('Transaction', 'RM-T2', 'TRANSACTION_POSTED', '{}', 1);
SELECT version FROM es_append('Transaction', 'RM-T2', 'TRANSACTION_REVERSED', '{"reason": "duplicate"}', 2);
SELECT version FROM es_append('Transaction', 'RM-T3', 'TRANSACTION_CREATED',
    '{"account_id": "RM-A2", "amount": 5, "direction": "debit"}', 0);
SELECT position AS last_position FROM es_append('Transaction', 'RM-T3', 'TRANSACTION_FAILED',
    '{"reason": "insufficient funds"}', 1) \gset
SELECT es_wait_for_projection('es_transactions', :last_position, '30 seconds') AS caught_up;
SELECT transaction_id, account_id, amount, direction, status, posted_at IS NOT NULL AS posted,
       settled_at IS NOT NULL AS settled, reversal_reason, failure_reason, version
  FROM es_transactions WHERE account_id = 'RM-A2' ORDER BY transaction_id;

-- A payment: initiated, authorized, completed, refunded in two parts; another fails.
SELECT version FROM es_append('Payment', 'RM-P1', 'PAYMENT_INITIATED',
    '{"from_account": "RM-A2", "to_account": "EXT-9", "amount": "250.00", "currency": "EUR"}', 0);
SELECT version FROM es_append('Payment', 'RM-P1', 'PAYMENT_AUTHORIZED', '{}', 1);
SELECT version FROM es_append('Payment', 'RM-P1', 'PAYMENT_COMPLETED', '{}', 2);
SELECT version FROM es_append('Payment', 'RM-P1', 'PAYMENT_REFUNDED', '{"amount": "100.00"}', 3);
SELECT version FROM es_append('Payment', 'RM-P1', 'PAYMENT_REFUNDED', '{"amount": "150.00"}', 4);
SELECT version FROM es_append('Payment', 'RM-P2', 'PAYMENT_INITIATED', '{"amount": 12, "currency": "EUR"}', 0);
SELECT position AS last_position FROM es_append('Payment', 'RM-P2', 'PAYMENT_FAILED', '{"reason": "declined"}', 1) \gset
SELECT es_wait_for_projection('es_payments', :last_position, '30 seconds') AS caught_up;
SELECT payment_id, from_account, to_account, amount, status, authorized_at IS NOT NULL AS authorized,
       completed_at IS NOT NULL AS completed, refunded_amount, failure_reason, version
  FROM es_payments WHERE payment_id LIKE 'RM-%' ORDER BY 1;

-- A loan from application to default; one rejected; one paid off.
SELECT version FROM es_append('Loan', 'RM-L1', 'LOAN_APPLICATION_SUBMITTED',
    '{"customer_id": "RM-C1", "product": "personal", "amount": "20000", "term_months": 36}', 0);
SELECT version FROM es_append('Loan', 'RM-L1', 'LOAN_APPROVED', '{"amount": "15000", "interest_rate": "7.45"}', 1);
SELECT version FROM es_append('Loan', 'RM-L1', 'LOAN_DISBURSED', '{}', 2);
SELECT version FROM es_append('Loan', 'RM-L1', 'LOAN_REPAYMENT_MADE', '{"amount": "500.00"}', 3);
SELECT version FROM es_append('Loan', 'RM-L1', 'LOAN_REPAYMENT_MADE', '{"amount": "500.00", "outstanding_balance": "14100.00"}', 4);
SELECT loan_id, status, requested_amount, approved_amount, interest_rate, term_months, disbursed_amount,
       repaid_amount, repayments, outstanding_balance FROM es_loans WHERE loan_id = 'RM-L1';
SELECT version FROM es_append('Loan', 'RM-L1', 'LOAN_DEFAULTED', '{}', 5);
SELECT version FROM es_append('Loan', 'RM-L2', 'LOAN_APPLICATION_SUBMITTED', '{"customer_id": "RM-C2", "amount": 5000}', 0);
SELECT version FROM es_append('Loan', 'RM-L2', 'LOAN_REJECTED', '{"reason": "affordability"}', 1);
SELECT version FROM es_append('Loan', 'RM-L3', 'LOAN_APPLICATION_SUBMITTED', '{"amount": 1000}', 0);
SELECT version FROM es_append('Loan', 'RM-L3', 'LOAN_APPROVED', '{}', 1);
SELECT version FROM es_append('Loan', 'RM-L3', 'LOAN_DISBURSED', '{"amount": 1000}', 2);
SELECT version FROM es_append('Loan', 'RM-L3', 'LOAN_PAID_OFF', '{}', 3);
SELECT loan_id, customer_id, status, approved_amount, disbursed_amount, repaid_amount, outstanding_balance,
       defaulted_at IS NOT NULL AS defaulted, rejection_reason, paid_off_at IS NOT NULL AS paid_off
  FROM es_loans WHERE loan_id LIKE 'RM-%' ORDER BY 1;

-- Money is numeric in every read model.
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod)
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
 WHERE c.relname LIKE 'es_rm_%' AND a.attname ~ '(amount|balance|limit|rate)' AND a.attnum > 0
 ORDER BY 1, 2;

-- Bad data in an inline projection refuses the append, and nothing is written.
SELECT * FROM es_test.state() \gset before_
SELECT es_test.error_of($$SELECT es_append('Account', 'RM-A2', 'ACCOUNT_BALANCE_UPDATED', '{"amount": "12,50"}', 101)$$);
SELECT es_test.error_of($$SELECT es_append('Account', 'RM-A2', 'ACCOUNT_BALANCE_UPDATED', '{"note": "no amount"}', 101)$$);
SELECT es_test.error_of($$SELECT es_append('Account', 'RM-A2', 'ACCOUNT_BALANCE_UPDATED', '{"amount": true}', 101)$$);
SELECT es_test.error_of($$SELECT es_append('Account', 'RM-A2', 'ACCOUNT_STATUS_CHANGED', '{}', 101)$$);
SELECT es_test.error_of($$SELECT es_append('Account', 'RM-A2', 'ACCOUNT_LIMIT_CHANGED', '{"limit": 5}', 101)$$);
SELECT es_test.error_of($$SELECT es_append('Customer', 'RM-C2', 'CUSTOMER_RISK_ASSESSED', '{}', 1)$$);
SELECT es_test.error_of($$SELECT es_append('Loan', 'RM-L3', 'LOAN_REPAYMENT_MADE', '{}', 4)$$);
SELECT es_test.error_of($$SELECT es_append('Loan', 'RM-L9', 'LOAN_APPLICATION_SUBMITTED', '{"term_months": "x"}', 0)$$);
SELECT es_test.error_of($$SELECT es_append('Loan', 'RM-L9', 'LOAN_APPLICATION_SUBMITTED', '{"term_months": 3.5}', 0)$$);
SELECT es_test.error_of($$SELECT es_append('Loan', 'RM-L9', 'LOAN_APPLICATION_SUBMITTED', '{"term_months": 1e10}', 0)$$);
SELECT (es_test.state()).events = :before_events AS no_event_written, balance, version
  FROM es_accounts WHERE account_id = 'RM-A2';

-- Tables altered by hand: a read model's column, or one of es_events', of
-- another type is refused (its values would be read as of the expected
-- type: a crash), rather than read.
BEGIN;
ALTER EXTENSION ultracore_es DROP VIEW es_customers;
DROP VIEW es_customers;
ALTER TABLE es_rm_customers ALTER COLUMN name TYPE integer USING length(name);
SELECT es_test.error_of($$SELECT es_append('Customer', 'RM-C2', 'CUSTOMER_UPDATED', '{"name": "Ada"}')$$);
ROLLBACK;
BEGIN;
ALTER TABLE es_events ALTER COLUMN causation_id TYPE bigint USING NULL;
SELECT es_test.error_of($$SELECT es_append('Customer', 'RM-C2', 'CUSTOMER_UPDATED', '{"name": "Ada"}')$$);
ROLLBACK;
-- Rows written by hand where the store would not: an event whose data and
-- personal_data are arrays is folded as having no fields; a row of
-- es_builtin_projections naming no read model of the library is refused.
BEGIN;
INSERT INTO es_events (event_id, event_type, aggregate_type, aggregate_id, version, tx_id, occurred_at,
                       recorded_at, data, metadata, schema_version, appended_by)
VALUES ('rm-by-hand', 'ACCOUNT_OPENED', 'Account', 'RM-HAND', 1, pg_current_xact_id(), now(), now(),
        '[1, 2]', '{"personal_data": [1]}', 1, 'nobody');
SELECT es_rebuild_projection('es_accounts', 'RM-HAND');
SELECT balance, status FROM es_accounts WHERE account_id = 'RM-HAND';
ROLLBACK;
BEGIN;
INSERT INTO es_builtin_projections
SELECT (jsonb_populate_record(b, '{"name": "rm_copy"}')).* FROM es_builtin_projections b WHERE b.name = 'es_customers';
SELECT es_test.error_of($$SELECT es_register_projection('rm_copy', mode => 'inline')$$);
ROLLBACK;
