-- The event-type catalog: seeded with the guide's types, extended by users.
SELECT count(*) >= 70 AS at_least_70, count(DISTINCT aggregate_type) AS domains
  FROM es_event_types WHERE builtin;
SELECT aggregate_type, count(*) FROM es_event_types GROUP BY 1 ORDER BY 1;

-- The types the guide names, spelled so.
SELECT t AS missing
  FROM unnest(ARRAY['CUSTOMER_CREATED', 'CUSTOMER_UPDATED', 'CUSTOMER_KYC_COMPLETED',
    'CUSTOMER_RISK_ASSESSED', 'CUSTOMER_DEACTIVATED', 'ACCOUNT_OPENED', 'ACCOUNT_CLOSED',
    'ACCOUNT_BALANCE_UPDATED', 'ACCOUNT_LIMIT_CHANGED', 'ACCOUNT_STATUS_CHANGED',
    'TRANSACTION_CREATED', 'TRANSACTION_POSTED', 'TRANSACTION_SETTLED', 'TRANSACTION_REVERSED',
    'PAYMENT_INITIATED', 'PAYMENT_AUTHORIZED', 'PAYMENT_COMPLETED', 'PAYMENT_FAILED',
    'PAYMENT_REFUNDED', 'LOAN_APPLICATION_SUBMITTED', 'LOAN_APPROVED', 'LOAN_REJECTED',
    'LOAN_DISBURSED', 'LOAN_REPAYMENT_MADE', 'LOAN_DEFAULTED']) t
 WHERE t NOT IN (SELECT event_type FROM es_event_types);

-- Every seeded type is named DOMAIN_..., after the aggregate type it belongs to.
SELECT event_type FROM es_event_types
 WHERE builtin AND (event_type !~ '^[A-Z]+(_[A-Z]+)+$'
                    OR split_part(event_type, '_', 1) <> upper(aggregate_type));

-- Register a new type: true when new, false when it existed (description updated).
SELECT es_register_event_type('ACCOUNT_INTEREST_ACCRUED', 'Account', 'Interest accrued on an account');
SELECT es_register_event_type(name => 'ACCOUNT_INTEREST_ACCRUED', aggregate_type => 'Account',
                              description => 'Daily interest accrued');
SELECT event_type, aggregate_type, description, schema_version, builtin, registered_by
  FROM es_event_types WHERE event_type = 'ACCOUNT_INTEREST_ACCRUED';
-- Usable at once, in this session and others.
SELECT version FROM es_append('Account', 'ET-ACC-1', 'ACCOUNT_INTEREST_ACCRUED', '{"amount": "0.12"}');
\c
SELECT version FROM es_append('Account', 'ET-ACC-1', 'ACCOUNT_INTEREST_ACCRUED', '{"amount": "0.13"}');

-- A type for any aggregate type.
SELECT es_register_event_type('NOTE_ADDED');
SELECT version FROM es_append('Customer', 'ET-CUST-1', 'NOTE_ADDED', '{"text": "called"}');
SELECT version FROM es_append('Account', 'ET-ACC-1', 'NOTE_ADDED', '{"text": "checked"}');

-- A type keeps its aggregate type.
SELECT es_test.error_of($$SELECT es_register_event_type('ACCOUNT_INTEREST_ACCRUED', 'Loan')$$);
SELECT es_test.error_of($$SELECT es_register_event_type('NOTE_ADDED', 'Customer')$$);
-- Bad names.
SELECT es_test.error_of($$SELECT es_register_event_type(NULL)$$);
SELECT es_test.error_of($$SELECT es_register_event_type('')$$);
SELECT es_test.error_of($$SELECT es_register_event_type('1_STARTS_WITH_DIGIT')$$);
SELECT es_test.error_of($$SELECT es_register_event_type('HAS SPACE')$$);
SELECT es_test.error_of($$SELECT es_register_event_type('X' || repeat('Y', 128))$$);
SELECT es_test.error_of($$SELECT es_register_event_type('OK_TYPE', 'Bad Aggregate')$$);
SELECT count(*) FROM es_event_types WHERE NOT builtin;

-- An unknown type is refused, with a hint on how to register it.
\set VERBOSITY default
SELECT es_append('Account', 'ET-ACC-1', 'ACCOUNT_TELEPORTED', '{}');
-- A type of another domain is refused too.
SELECT es_append('Account', 'ET-ACC-1', 'CUSTOMER_CREATED', '{}');
