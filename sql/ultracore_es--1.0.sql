/* ultracore_es--1.0.sql: the event store of a core-banking platform */

\echo Use "CREATE EXTENSION ultracore_es" to load this file. \quit

------------------------------------------------------------------------------
-- Storage
------------------------------------------------------------------------------

-- The clusters the store has lived in, each with the offset added to the
-- transaction ids it stores there (see src/store.c).  The first append in a
-- cluster adds its row; after a restore into another cluster, the rows pg_dump
-- carried along tell that the store moved, and the new row re-bases it so that
-- commit order survives.  No unique key: concurrent first appenders each add
-- the same row rather than wait for one another.
CREATE TABLE @extschema@.es_clusters (
    system_identifier   bigint NOT NULL,
    xid_offset          bigint NOT NULL CHECK (xid_offset >= 0),
    first_append_at     timestamptz NOT NULL
);
COMMENT ON TABLE @extschema@.es_clusters IS
    'ultracore_es: clusters the store has lived in, and the offset of its transaction ids in each';

-- The event-type catalog: appends of unregistered types are refused.
CREATE TABLE @extschema@.es_event_types (
    event_type      text COLLATE "C" PRIMARY KEY
                    CHECK (event_type ~ '^[A-Za-z][A-Za-z0-9_.:-]*$' AND octet_length(event_type) <= 128),
    aggregate_type  text COLLATE "C"
                    CHECK (aggregate_type ~ '^[A-Za-z][A-Za-z0-9_.:-]*$' AND octet_length(aggregate_type) <= 128),
    description     text NOT NULL DEFAULT '',
    schema_version  integer NOT NULL DEFAULT 1 CHECK (schema_version >= 1),
    builtin         boolean NOT NULL DEFAULT false,
    registered_at   timestamptz NOT NULL DEFAULT now(),
    registered_by   text NOT NULL DEFAULT current_user
);
COMMENT ON TABLE @extschema@.es_event_types IS
    'ultracore_es: the event types appends accept, each bound to an aggregate type (NULL: any)';

-- One row per aggregate: its type, fixed by its first event.  Writers of an
-- aggregate lock its row (src/aggregate.c); the row itself never changes.  Its
-- current version is the last version in es_events (see es_aggregate_versions).
CREATE TABLE @extschema@.es_aggregates (
    aggregate_id    text COLLATE "C" PRIMARY KEY,
    aggregate_type  text COLLATE "C" NOT NULL,
    created_at      timestamptz NOT NULL
);
CREATE INDEX es_aggregates_type ON @extschema@.es_aggregates (aggregate_type, aggregate_id);
COMMENT ON TABLE @extschema@.es_aggregates IS
    'ultracore_es: one row per aggregate, with its type; locked by the aggregate''s writers';

CREATE SEQUENCE @extschema@.es_events_position_seq AS bigint;
COMMENT ON SEQUENCE @extschema@.es_events_position_seq IS
    'ultracore_es: global positions of events, taken at insert';

-- The append-only events table.  Identifiers compare byte-wise (COLLATE "C"):
-- they are codes, not words, and byte order keeps the B-trees cheap.  No CHECK
-- constraints: the executor re-parses them for every statement, and the write
-- path already guarantees what they would say.
CREATE TABLE @extschema@.es_events (
    event_id        text COLLATE "C" NOT NULL,
    event_type      text COLLATE "C" NOT NULL,
    aggregate_type  text COLLATE "C" NOT NULL,
    aggregate_id    text COLLATE "C" NOT NULL,
    version         bigint NOT NULL,
    position        bigint NOT NULL DEFAULT nextval('@extschema@.es_events_position_seq'),
    tx_id           xid8 NOT NULL,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL,
    causation_id    text COLLATE "C",
    correlation_id  text COLLATE "C",
    data            jsonb NOT NULL,
    metadata        jsonb NOT NULL,
    schema_version  integer NOT NULL,
    appended_by     text NOT NULL,
    CONSTRAINT es_events_event_id_key PRIMARY KEY (event_id),
    CONSTRAINT es_events_version_key UNIQUE (aggregate_id, version)
);
ALTER SEQUENCE @extschema@.es_events_position_seq OWNED BY @extschema@.es_events.position;
-- Commit-order reads; positions are unique by construction (one sequence),
-- and this index also serves lookups by tx_id.
CREATE INDEX es_events_commit_order ON @extschema@.es_events (tx_id, position);
CREATE INDEX es_events_correlation ON @extschema@.es_events (correlation_id, position)
    WHERE correlation_id IS NOT NULL;

COMMENT ON TABLE @extschema@.es_events IS
    'ultracore_es: the append-only event store; write with es_append/es_append_batch';
COMMENT ON COLUMN @extschema@.es_events.event_id IS 'unique id of the event (the caller''s, or a generated UUID)';
COMMENT ON COLUMN @extschema@.es_events.event_type IS 'type of the event, from es_event_types';
COMMENT ON COLUMN @extschema@.es_events.aggregate_type IS 'type of the aggregate, fixed by its first event';
COMMENT ON COLUMN @extschema@.es_events.aggregate_id IS 'id of the aggregate the event belongs to';
COMMENT ON COLUMN @extschema@.es_events.version IS 'version of the aggregate this event made (1, 2, ...)';
COMMENT ON COLUMN @extschema@.es_events.position IS 'global position, taken at insert (not commit order)';
COMMENT ON COLUMN @extschema@.es_events.tx_id IS 'appending transaction (xid8, offset after a restore into another cluster); commit order is (tx_id, position)';
COMMENT ON COLUMN @extschema@.es_events.occurred_at IS 'when the event occurred (the caller''s, or the append time)';
COMMENT ON COLUMN @extschema@.es_events.recorded_at IS 'when the event was appended';
COMMENT ON COLUMN @extschema@.es_events.causation_id IS 'id of the event or command that caused this event';
COMMENT ON COLUMN @extschema@.es_events.correlation_id IS 'id of the request this event belongs to';
COMMENT ON COLUMN @extschema@.es_events.data IS 'the event''s payload (a JSON object)';
COMMENT ON COLUMN @extschema@.es_events.metadata IS 'free-form metadata (a JSON object)';
COMMENT ON COLUMN @extschema@.es_events.schema_version IS 'schema version of data when written';
COMMENT ON COLUMN @extschema@.es_events.appended_by IS 'role that called es_append';

-- Each aggregate with its current version, from the last of its events.
CREATE VIEW @extschema@.es_aggregate_versions AS
SELECT a.aggregate_id, a.aggregate_type, e.version, a.created_at,
       e.recorded_at AS updated_at, e.tx_id AS last_tx_id
  FROM @extschema@.es_aggregates a
 CROSS JOIN LATERAL (SELECT ev.version, ev.recorded_at, ev.tx_id
                       FROM @extschema@.es_events ev
                      WHERE ev.aggregate_id = a.aggregate_id
                      ORDER BY ev.version DESC
                      LIMIT 1) e;
COMMENT ON VIEW @extschema@.es_aggregate_versions IS
    'ultracore_es: every aggregate with its type and current version (one index probe each)';

CREATE FUNCTION @extschema@.es_refuse_modification() RETURNS trigger
    AS 'MODULE_PATHNAME', 'es_refuse_modification' LANGUAGE C;
COMMENT ON FUNCTION @extschema@.es_refuse_modification() IS
    'ultracore_es: trigger refusing UPDATE, DELETE and TRUNCATE of the events table';
CREATE TRIGGER es_events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON @extschema@.es_events
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.es_refuse_modification();
ALTER TABLE @extschema@.es_events ENABLE ALWAYS TRIGGER es_events_append_only;

-- pg_dump keeps the data of these tables (the seeded event types are recreated
-- by CREATE EXTENSION, so only the registered ones are dumped).
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_clusters', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_event_types', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_aggregates', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_events', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_events_position_seq', '');

------------------------------------------------------------------------------
-- The platform's event types: 13 domains, named as facts in the past tense.
------------------------------------------------------------------------------
INSERT INTO @extschema@.es_event_types (event_type, aggregate_type, description, builtin) VALUES
    ('CUSTOMER_CREATED',                'Customer',     'A customer was onboarded', true),
    ('CUSTOMER_UPDATED',                'Customer',     'A customer''s details changed', true),
    ('CUSTOMER_KYC_COMPLETED',          'Customer',     'Know-your-customer checks of a customer completed', true),
    ('CUSTOMER_RISK_ASSESSED',          'Customer',     'A customer''s risk rating was assessed', true),
    ('CUSTOMER_DEACTIVATED',            'Customer',     'A customer was deactivated', true),
    ('CUSTOMER_REACTIVATED',            'Customer',     'A deactivated customer was reactivated', true),
    ('CUSTOMER_ADDRESS_CHANGED',        'Customer',     'A customer''s address changed', true),
    ('ACCOUNT_OPENED',                  'Account',      'An account was opened for a customer', true),
    ('ACCOUNT_CLOSED',                  'Account',      'An account was closed', true),
    ('ACCOUNT_BALANCE_UPDATED',         'Account',      'An account''s balance changed', true),
    ('ACCOUNT_LIMIT_CHANGED',           'Account',      'An account''s limits changed', true),
    ('ACCOUNT_STATUS_CHANGED',          'Account',      'An account''s status changed', true),
    ('ACCOUNT_FROZEN',                  'Account',      'An account was frozen', true),
    ('ACCOUNT_UNFROZEN',                'Account',      'A frozen account was released', true),
    ('TRANSACTION_CREATED',             'Transaction',  'A transaction was created on an account', true),
    ('TRANSACTION_POSTED',              'Transaction',  'A transaction was posted to the ledger', true),
    ('TRANSACTION_SETTLED',             'Transaction',  'A transaction was settled', true),
    ('TRANSACTION_REVERSED',            'Transaction',  'A transaction was reversed', true),
    ('TRANSACTION_FAILED',              'Transaction',  'A transaction failed', true),
    ('PAYMENT_INITIATED',               'Payment',      'A payment was initiated', true),
    ('PAYMENT_AUTHORIZED',              'Payment',      'A payment was authorized', true),
    ('PAYMENT_COMPLETED',               'Payment',      'A payment completed', true),
    ('PAYMENT_FAILED',                  'Payment',      'A payment failed', true),
    ('PAYMENT_REFUNDED',                'Payment',      'A payment was refunded', true),
    ('PAYMENT_CANCELLED',               'Payment',      'A payment was cancelled before completion', true),
    ('LOAN_APPLICATION_SUBMITTED',      'Loan',         'A loan application was submitted', true),
    ('LOAN_APPROVED',                   'Loan',         'A loan application was approved', true),
    ('LOAN_REJECTED',                   'Loan',         'A loan application was rejected', true),
    ('LOAN_DISBURSED',                  'Loan',         'A loan was disbursed', true),
    ('LOAN_REPAYMENT_MADE',             'Loan',         'A loan repayment was made', true),
    ('LOAN_DEFAULTED',                  'Loan',         'A loan defaulted', true),
    ('LOAN_PAID_OFF',                   'Loan',         'A loan was repaid in full', true),
    ('LOAN_RESTRUCTURED',               'Loan',         'A loan''s terms were restructured', true),
    ('INVESTMENT_PORTFOLIO_CREATED',    'Investment',   'An investment portfolio was created', true),
    ('INVESTMENT_ORDER_PLACED',         'Investment',   'An investment order was placed', true),
    ('INVESTMENT_ORDER_EXECUTED',       'Investment',   'An investment order was executed', true),
    ('INVESTMENT_ORDER_CANCELLED',      'Investment',   'An investment order was cancelled', true),
    ('INVESTMENT_DIVIDEND_RECEIVED',    'Investment',   'A dividend was received', true),
    ('INVESTMENT_PORTFOLIO_REBALANCED', 'Investment',   'A portfolio was rebalanced', true),
    ('COMPLIANCE_CHECK_INITIATED',      'Compliance',   'A compliance check was initiated', true),
    ('COMPLIANCE_CHECK_PASSED',         'Compliance',   'A compliance check passed', true),
    ('COMPLIANCE_CHECK_FAILED',         'Compliance',   'A compliance check failed', true),
    ('COMPLIANCE_SANCTIONS_SCREENED',   'Compliance',   'A party was screened against sanctions lists', true),
    ('COMPLIANCE_AML_ALERT_RAISED',     'Compliance',   'An anti-money-laundering alert was raised', true),
    ('COMPLIANCE_REPORT_FILED',         'Compliance',   'A regulatory report was filed', true),
    ('RISK_ASSESSMENT_INITIATED',       'Risk',         'A risk assessment was initiated', true),
    ('RISK_ASSESSMENT_COMPLETED',       'Risk',         'A risk assessment completed', true),
    ('RISK_SCORE_CHANGED',              'Risk',         'A risk score changed', true),
    ('RISK_LIMIT_BREACHED',             'Risk',         'A risk limit was breached', true),
    ('RISK_FRAUD_DETECTED',             'Risk',         'Fraud was detected', true),
    ('COLLATERAL_REGISTERED',           'Collateral',   'Collateral was registered', true),
    ('COLLATERAL_VALUED',               'Collateral',   'Collateral was valued', true),
    ('COLLATERAL_PLEDGED',              'Collateral',   'Collateral was pledged against a loan', true),
    ('COLLATERAL_RELEASED',             'Collateral',   'Collateral was released', true),
    ('COLLATERAL_LIQUIDATED',           'Collateral',   'Collateral was liquidated', true),
    ('NOTIFICATION_QUEUED',             'Notification', 'A notification was queued', true),
    ('NOTIFICATION_SENT',               'Notification', 'A notification was sent', true),
    ('NOTIFICATION_DELIVERED',          'Notification', 'A notification was delivered', true),
    ('NOTIFICATION_FAILED',             'Notification', 'A notification could not be delivered', true),
    ('AUDIT_RECORD_CREATED',            'Audit',        'An audit record was created', true),
    ('AUDIT_REVIEW_COMPLETED',          'Audit',        'An audit review completed', true),
    ('AUDIT_FINDING_RAISED',            'Audit',        'An audit finding was raised', true),
    ('AUDIT_FINDING_RESOLVED',          'Audit',        'An audit finding was resolved', true),
    ('ANALYTICS_REPORT_GENERATED',      'Analytics',    'An analytics report was generated', true),
    ('ANALYTICS_METRIC_RECORDED',       'Analytics',    'An analytics metric was recorded', true),
    ('ANALYTICS_SEGMENT_UPDATED',       'Analytics',    'A customer segment was updated', true),
    ('ANALYTICS_ANOMALY_DETECTED',      'Analytics',    'An anomaly was detected', true),
    ('SYSTEM_STARTED',                  'System',       'A system component started', true),
    ('SYSTEM_STOPPED',                  'System',       'A system component stopped', true),
    ('SYSTEM_CONFIG_CHANGED',           'System',       'A system configuration changed', true),
    ('SYSTEM_MAINTENANCE_SCHEDULED',    'System',       'Maintenance was scheduled', true),
    ('SYSTEM_ERROR_OCCURRED',           'System',       'A system error occurred', true);

------------------------------------------------------------------------------
-- SQL API.  The functions run their queries as the owner of the tables (see
-- src/store.c), so a role needs EXECUTE on them and nothing else; EXECUTE is
-- revoked from PUBLIC below and granted by the DBA (README, "Privileges").
------------------------------------------------------------------------------
CREATE TYPE @extschema@.es_append_result AS (
    event_id    text,
    version     bigint,
    position    bigint
);
COMMENT ON TYPE @extschema@.es_append_result IS
    'ultracore_es: what an append stored: the event id, the aggregate version it made, its position';

CREATE FUNCTION @extschema@.es_append(
    aggregate_type      text,
    aggregate_id        text,
    event_type          text,
    data                jsonb DEFAULT '{}',
    expected_version    bigint DEFAULT NULL,
    metadata            jsonb DEFAULT '{}',
    event_id            text DEFAULT NULL,
    causation_id        text DEFAULT NULL,
    correlation_id      text DEFAULT NULL,
    occurred_at         timestamptz DEFAULT NULL)
RETURNS @extschema@.es_append_result
AS 'MODULE_PATHNAME', 'es_append' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_append(text, text, text, jsonb, bigint, jsonb, text, text, text, timestamptz) IS
    'ultracore_es: append one event; expected_version NULL = any, 0 = new aggregate, -1 = existing aggregate, N = current version N';

CREATE FUNCTION @extschema@.es_append_batch(
    aggregate_type      text,
    aggregate_id        text,
    events              jsonb,
    expected_version    bigint DEFAULT NULL,
    metadata            jsonb DEFAULT NULL,
    causation_id        text DEFAULT NULL,
    correlation_id      text DEFAULT NULL)
RETURNS SETOF @extschema@.es_append_result
AS 'MODULE_PATHNAME', 'es_append_batch' LANGUAGE C VOLATILE PARALLEL UNSAFE ROWS 100;
COMMENT ON FUNCTION @extschema@.es_append_batch(text, text, jsonb, bigint, jsonb, text, text) IS
    'ultracore_es: append a JSON array of events to one aggregate atomically, with one expected_version';

CREATE FUNCTION @extschema@.es_get_events(
    aggregate_id        text,
    from_version        bigint DEFAULT 1,
    to_version          bigint DEFAULT NULL,
    end_timestamp       timestamptz DEFAULT NULL)
RETURNS SETOF @extschema@.es_events
AS 'MODULE_PATHNAME', 'es_get_events' LANGUAGE C STABLE PARALLEL SAFE ROWS 100;
COMMENT ON FUNCTION @extschema@.es_get_events(text, bigint, bigint, timestamptz) IS
    'ultracore_es: an aggregate''s events in version order, optionally a version range or up to a point in time';

CREATE FUNCTION @extschema@.es_read_all(
    after_tx_id         xid8 DEFAULT '0',
    after_position      bigint DEFAULT 0,
    aggregate_type      text DEFAULT NULL,
    event_types         text[] DEFAULT NULL,
    max_count           integer DEFAULT 1000)
RETURNS SETOF @extschema@.es_events
AS 'MODULE_PATHNAME', 'es_read_all' LANGUAGE C STABLE PARALLEL SAFE ROWS 1000;
COMMENT ON FUNCTION @extschema@.es_read_all(xid8, bigint, text, text[], integer) IS
    'ultracore_es: committed events in commit order after a (tx_id, position) checkpoint; never skips a late commit';

CREATE FUNCTION @extschema@.es_commit_horizon()
RETURNS xid8
AS 'MODULE_PATHNAME', 'es_commit_horizon' LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.es_commit_horizon() IS
    'ultracore_es: every event with a smaller tx_id is already committed; a safe checkpoint (horizon, 0) for filtered readers';

CREATE FUNCTION @extschema@.es_aggregate_version(aggregate_id text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'es_aggregate_version' LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.es_aggregate_version(text) IS
    'ultracore_es: an aggregate''s current version, 0 when it does not exist';

CREATE FUNCTION @extschema@.es_register_event_type(
    name                text,
    aggregate_type      text DEFAULT NULL,
    description         text DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'es_register_event_type' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_register_event_type(text, text, text) IS
    'ultracore_es: register an event type (true when new); aggregate_type NULL = usable by any aggregate type';

CREATE FUNCTION @extschema@.es_causation_chain(event_id text)
RETURNS SETOF @extschema@.es_events
AS 'MODULE_PATHNAME', 'es_causation_chain' LANGUAGE C STABLE PARALLEL SAFE ROWS 10;
COMMENT ON FUNCTION @extschema@.es_causation_chain(text) IS
    'ultracore_es: an event and its ancestors through causation_id, root cause first';

CREATE FUNCTION @extschema@.es_correlated_events(correlation_id text)
RETURNS SETOF @extschema@.es_events
AS 'MODULE_PATHNAME', 'es_correlated_events' LANGUAGE C STABLE PARALLEL SAFE ROWS 10;
COMMENT ON FUNCTION @extschema@.es_correlated_events(text) IS
    'ultracore_es: every event of one correlation id (one request), in position order';

------------------------------------------------------------------------------
-- Privileges: nothing for PUBLIC.  Tables are written only through the
-- functions above; reading them directly needs an explicit GRANT SELECT.
------------------------------------------------------------------------------
REVOKE ALL ON TABLE @extschema@.es_clusters, @extschema@.es_event_types, @extschema@.es_aggregates,
    @extschema@.es_events, @extschema@.es_aggregate_versions FROM PUBLIC;
REVOKE ALL ON SEQUENCE @extschema@.es_events_position_seq FROM PUBLIC;
REVOKE ALL ON FUNCTION
    @extschema@.es_refuse_modification(),
    @extschema@.es_append(text, text, text, jsonb, bigint, jsonb, text, text, text, timestamptz),
    @extschema@.es_append_batch(text, text, jsonb, bigint, jsonb, text, text),
    @extschema@.es_get_events(text, bigint, bigint, timestamptz),
    @extschema@.es_read_all(xid8, bigint, text, text[], integer),
    @extschema@.es_commit_horizon(),
    @extschema@.es_aggregate_version(text),
    @extschema@.es_register_event_type(text, text, text),
    @extschema@.es_causation_chain(text),
    @extschema@.es_correlated_events(text)
FROM PUBLIC;
