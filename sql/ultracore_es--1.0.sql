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
-- Commit-order reads; this index also serves lookups by tx_id.
CREATE INDEX es_events_commit_order ON @extschema@.es_events (tx_id, position);
-- Lookups by position (es_wait_for_projection); positions come from one
-- sequence, and the index makes their uniqueness a rule, restores included.
CREATE UNIQUE INDEX es_events_position_key ON @extschema@.es_events (position);
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
COMMENT ON COLUMN @extschema@.es_events.tx_id IS 'commit-order key: the appending transaction''s id (offset after a restore into another cluster), raised to the previous event''s key of the aggregate; commit order is (tx_id, position)';
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
AS 'MODULE_PATHNAME', 'es_get_events' LANGUAGE C STABLE PARALLEL RESTRICTED ROWS 100;
COMMENT ON FUNCTION @extschema@.es_get_events(text, bigint, bigint, timestamptz) IS
    'ultracore_es: an aggregate''s events in version order, optionally a version range or up to a point in time';

CREATE FUNCTION @extschema@.es_read_all(
    after_tx_id         xid8 DEFAULT '0',
    after_position      bigint DEFAULT 0,
    aggregate_type      text DEFAULT NULL,
    event_types         text[] DEFAULT NULL,
    max_count           integer DEFAULT 1000)
RETURNS SETOF @extschema@.es_events
AS 'MODULE_PATHNAME', 'es_read_all' LANGUAGE C STABLE PARALLEL RESTRICTED ROWS 1000;
COMMENT ON FUNCTION @extschema@.es_read_all(xid8, bigint, text, text[], integer) IS
    'ultracore_es: committed events in commit order after a (tx_id, position) checkpoint; never skips a late commit';

CREATE FUNCTION @extschema@.es_commit_horizon()
RETURNS xid8
AS 'MODULE_PATHNAME', 'es_commit_horizon' LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION @extschema@.es_commit_horizon() IS
    'ultracore_es: every event with a smaller tx_id is already committed; a safe checkpoint (horizon, 0) for filtered readers';

CREATE FUNCTION @extschema@.es_aggregate_version(aggregate_id text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'es_aggregate_version' LANGUAGE C STABLE PARALLEL RESTRICTED;
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
AS 'MODULE_PATHNAME', 'es_causation_chain' LANGUAGE C STABLE PARALLEL RESTRICTED ROWS 10;
COMMENT ON FUNCTION @extschema@.es_causation_chain(text) IS
    'ultracore_es: an event and its ancestors through causation_id, root cause first';

CREATE FUNCTION @extschema@.es_correlated_events(correlation_id text)
RETURNS SETOF @extschema@.es_events
AS 'MODULE_PATHNAME', 'es_correlated_events' LANGUAGE C STABLE PARALLEL RESTRICTED ROWS 10;
COMMENT ON FUNCTION @extschema@.es_correlated_events(text) IS
    'ultracore_es: every event of one correlation id (one request), in position order';

------------------------------------------------------------------------------
-- Aggregate state: reducers, upcasters, snapshots, loads.
------------------------------------------------------------------------------

-- The reducer of each aggregate type: a function (state jsonb, event es_events)
-- returning the new state.  Types without one use es_default_reducer.
CREATE TABLE @extschema@.es_reducers (
    aggregate_type  text COLLATE "C" PRIMARY KEY,
    reducer         regprocedure NOT NULL,
    registered_at   timestamptz NOT NULL DEFAULT now(),
    registered_by   text NOT NULL DEFAULT current_user
);
COMMENT ON TABLE @extschema@.es_reducers IS
    'ultracore_es: the function that folds one event into the state, per aggregate type';

-- Upcasters: each converts a payload of an event type from one schema version to the next.
CREATE TABLE @extschema@.es_upcasters (
    event_type      text COLLATE "C" NOT NULL REFERENCES @extschema@.es_event_types,
    from_version    integer NOT NULL CHECK (from_version >= 1),
    upcaster        regprocedure NOT NULL,
    registered_at   timestamptz NOT NULL DEFAULT now(),
    registered_by   text NOT NULL DEFAULT current_user,
    PRIMARY KEY (event_type, from_version)
);
COMMENT ON TABLE @extschema@.es_upcasters IS
    'ultracore_es: functions converting event payloads from a schema version to the next';

-- Automatic snapshots: every N events of an aggregate of this type.
CREATE TABLE @extschema@.es_snapshot_policies (
    aggregate_type  text COLLATE "C" PRIMARY KEY,
    every_n_events  integer NOT NULL CHECK (every_n_events >= 1),
    set_at          timestamptz NOT NULL DEFAULT now(),
    set_by          text NOT NULL DEFAULT current_user
);
COMMENT ON TABLE @extschema@.es_snapshot_policies IS
    'ultracore_es: take a snapshot of each aggregate of a type every N events';

-- Snapshots: an aggregate's state at a version, and what made it.  A snapshot
-- is used only while its fingerprint (of the reducer and the upcasters of the
-- aggregate type, definitions included) is the current one.
CREATE TABLE @extschema@.es_snapshots (
    aggregate_id    text COLLATE "C" NOT NULL,
    version         bigint NOT NULL CHECK (version >= 1),
    aggregate_type  text COLLATE "C" NOT NULL,
    state           jsonb NOT NULL,
    reducer         text NOT NULL,
    fingerprint     text NOT NULL,
    automatic       boolean NOT NULL,
    taken_at        timestamptz NOT NULL,
    taken_by        text NOT NULL,
    PRIMARY KEY (aggregate_id, version)
);
COMMENT ON TABLE @extschema@.es_snapshots IS
    'ultracore_es: aggregate states at a version, with the reducer and upcasters that made them';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_reducers', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_upcasters', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_snapshot_policies', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_snapshots', '');

-- Every change to a catalog of the extension, however made, reaches the
-- caches of every backend (src/triggers.c).
CREATE FUNCTION @extschema@.es_catalog_changed() RETURNS trigger
    AS 'MODULE_PATHNAME', 'es_catalog_changed' LANGUAGE C;
COMMENT ON FUNCTION @extschema@.es_catalog_changed() IS
    'ultracore_es: trigger invalidating the backends'' caches of a catalog table of the extension';
CREATE TRIGGER es_event_types_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON @extschema@.es_event_types FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.es_catalog_changed();
CREATE TRIGGER es_upcasters_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON @extschema@.es_upcasters FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.es_catalog_changed();
CREATE TRIGGER es_reducers_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON @extschema@.es_reducers FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.es_catalog_changed();
CREATE TRIGGER es_snapshot_policies_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON @extschema@.es_snapshot_policies FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.es_catalog_changed();
ALTER TABLE @extschema@.es_event_types ENABLE ALWAYS TRIGGER es_event_types_changed;
ALTER TABLE @extschema@.es_upcasters ENABLE ALWAYS TRIGGER es_upcasters_changed;
ALTER TABLE @extschema@.es_reducers ENABLE ALWAYS TRIGGER es_reducers_changed;
ALTER TABLE @extschema@.es_snapshot_policies ENABLE ALWAYS TRIGGER es_snapshot_policies_changed;
-- Backends cache their cluster's transaction id offset (store.c).
CREATE TRIGGER es_clusters_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON @extschema@.es_clusters FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.es_catalog_changed();
ALTER TABLE @extschema@.es_clusters ENABLE ALWAYS TRIGGER es_clusters_changed;

CREATE TYPE @extschema@.es_aggregate_state AS (
    aggregate_type      text,
    state               jsonb,
    version             bigint,
    snapshot_version    bigint,
    events_applied      bigint
);
COMMENT ON TYPE @extschema@.es_aggregate_state IS
    'ultracore_es: an aggregate''s state at a version, the snapshot it started from and the events folded after it';

CREATE FUNCTION @extschema@.es_default_reducer(state jsonb, event @extschema@.es_events)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'es_default_reducer' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.es_default_reducer(jsonb, @extschema@.es_events) IS
    'ultracore_es: the guide''s fold: a creating event (..._CREATED, _OPENED, _SUBMITTED, _INITIATED, or version 1) sets the state to its data, later events merge their data into it';

CREATE FUNCTION @extschema@.es_register_reducer(aggregate_type text, function regprocedure)
RETURNS void
AS 'MODULE_PATHNAME', 'es_register_reducer' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_register_reducer(text, regprocedure) IS
    'ultracore_es: fold events of an aggregate type with function(state jsonb, event es_events) returns jsonb; NULL restores the default reducer';

CREATE FUNCTION @extschema@.es_register_upcaster(event_type text, from_version integer, function regprocedure)
RETURNS void
AS 'MODULE_PATHNAME', 'es_register_upcaster' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_register_upcaster(text, integer, regprocedure) IS
    'ultracore_es: convert payloads of an event type from schema version from_version to the next with function(data jsonb) returns jsonb';

CREATE FUNCTION @extschema@.es_load_aggregate(
    aggregate_id        text,
    at_version          bigint DEFAULT NULL,
    at_time             timestamptz DEFAULT NULL)
RETURNS @extschema@.es_aggregate_state
AS 'MODULE_PATHNAME', 'es_load_aggregate' LANGUAGE C STABLE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_load_aggregate(text, bigint, timestamptz) IS
    'ultracore_es: an aggregate''s state (latest usable snapshot plus the later events), now, at a version or at a point in time';

CREATE FUNCTION @extschema@.es_save_snapshot(
    aggregate_id        text,
    version             bigint DEFAULT NULL,
    state               jsonb DEFAULT NULL,
    aggregate_type      text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'es_save_snapshot' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_save_snapshot(text, bigint, jsonb, text) IS
    'ultracore_es: save a snapshot at a version (default: the current one) of a given state (default: the state the reducer folds); returns the version';

CREATE FUNCTION @extschema@.es_get_snapshot(
    aggregate_id        text,
    max_version         bigint DEFAULT NULL,
    include_stale       boolean DEFAULT false)
RETURNS SETOF @extschema@.es_snapshots
AS 'MODULE_PATHNAME', 'es_get_snapshot' LANGUAGE C STABLE PARALLEL UNSAFE ROWS 1;
COMMENT ON FUNCTION @extschema@.es_get_snapshot(text, bigint, boolean) IS
    'ultracore_es: the latest snapshot at or below max_version (usable ones only, unless include_stale)';

CREATE FUNCTION @extschema@.es_snapshot_fingerprint(aggregate_type text)
RETURNS text
AS 'MODULE_PATHNAME', 'es_snapshot_fingerprint' LANGUAGE C STABLE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_snapshot_fingerprint(text) IS
    'ultracore_es: the fingerprint of the reducer and upcasters an aggregate type''s snapshots are made with now';

-- Every snapshot, and whether loads can use it.
CREATE VIEW @extschema@.es_snapshot_list AS
SELECT s.aggregate_id, s.aggregate_type, s.version, s.automatic, s.reducer,
       s.fingerprint OPERATOR(pg_catalog.=) @extschema@.es_snapshot_fingerprint(s.aggregate_type) AS usable,
       pg_catalog.pg_column_size(s.state) AS state_bytes, s.taken_at, s.taken_by
  FROM @extschema@.es_snapshots s;
COMMENT ON VIEW @extschema@.es_snapshot_list IS
    'ultracore_es: snapshots, with whether loads can use them (made by the current reducer and upcasters)';

CREATE FUNCTION @extschema@.es_list_snapshots(aggregate_id text DEFAULT NULL, aggregate_type text DEFAULT NULL)
RETURNS SETOF @extschema@.es_snapshot_list
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM @extschema@.es_snapshot_list l
     WHERE ($1 IS NULL OR l.aggregate_id = $1) AND ($2 IS NULL OR l.aggregate_type = $2)
     ORDER BY l.aggregate_id, l.version
$$;
COMMENT ON FUNCTION @extschema@.es_list_snapshots(text, text) IS
    'ultracore_es: snapshots of an aggregate, of an aggregate type, or all, with whether each is usable';

CREATE FUNCTION @extschema@.es_delete_snapshots(
    aggregate_id        text DEFAULT NULL,
    aggregate_type      text DEFAULT NULL,
    below_version       bigint DEFAULT NULL,
    stale_only          boolean DEFAULT false)
RETURNS bigint
AS 'MODULE_PATHNAME', 'es_delete_snapshots' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_delete_snapshots(text, text, bigint, boolean) IS
    'ultracore_es: delete snapshots of an aggregate or an aggregate type, optionally only below a version or only stale ones; returns how many';

CREATE FUNCTION @extschema@.es_rebuild_snapshots(
    aggregate_id        text DEFAULT NULL,
    aggregate_type      text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'es_rebuild_snapshots' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_rebuild_snapshots(text, text) IS
    'ultracore_es: recompute stale snapshots (made by another reducer or other upcasters) with the current ones; returns how many';

CREATE FUNCTION @extschema@.es_set_snapshot_policy(aggregate_type text, every_n_events integer)
RETURNS void
AS 'MODULE_PATHNAME', 'es_set_snapshot_policy' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_set_snapshot_policy(text, integer) IS
    'ultracore_es: snapshot every aggregate of a type when its version reaches a multiple of every_n_events (NULL: no automatic snapshots)';

------------------------------------------------------------------------------
-- Consumers: the background worker's commit-order readers (handlers now;
-- async projections and the Kafka mirror use the same engine).
------------------------------------------------------------------------------

-- Every consumer's checkpoint, committed with its effects, and its retry state.
CREATE TABLE @extschema@.es_consumers (
    name                text COLLATE "C" PRIMARY KEY
                        CHECK (name ~ '^[A-Za-z][A-Za-z0-9_.:-]*$' AND octet_length(name) <= 63),
    kind                text NOT NULL CHECK (kind IN ('handler', 'projection', 'kafka')),
    checkpoint_tx       xid8 NOT NULL DEFAULT '0',
    checkpoint_position bigint NOT NULL DEFAULT 0,
    paused              boolean NOT NULL DEFAULT false,
    events_processed    bigint NOT NULL DEFAULT 0,
    last_processed_at   timestamptz,
    retry_event_id      text COLLATE "C",
    retry_attempts      integer NOT NULL DEFAULT 0,
    retry_first_failed_at timestamptz,
    retry_at            timestamptz,
    last_error          text,
    last_error_at       timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE @extschema@.es_consumers IS
    'ultracore_es: commit-order consumers run by the background worker, with their (tx_id, position) checkpoints';

-- Handlers: an SQL function called once per event, in commit order.
CREATE TABLE @extschema@.es_handlers (
    name            text COLLATE "C" PRIMARY KEY REFERENCES @extschema@.es_consumers ON DELETE CASCADE,
    function        regprocedure NOT NULL,
    event_types     text[] COLLATE "C",
    max_retries     integer NOT NULL DEFAULT 3 CHECK (max_retries >= 0),
    backoff         interval NOT NULL DEFAULT '1 second' CHECK (backoff >= '0'),
    run_as          regrole NOT NULL,
    registered_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE @extschema@.es_handlers IS
    'ultracore_es: event handlers: function(event es_events), the event types they take, retries and backoff, the role they run as';

-- The idempotency ledger: an event a consumer applied, written in the same
-- transaction as the consumer's effects.
CREATE TABLE @extschema@.es_handled (
    consumer    text COLLATE "C" NOT NULL REFERENCES @extschema@.es_consumers ON DELETE CASCADE,
    event_id    text COLLATE "C" NOT NULL,
    position    bigint NOT NULL,
    handled_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
COMMENT ON TABLE @extschema@.es_handled IS
    'ultracore_es: idempotency ledger: each event each consumer applied, committed with its effects';

-- Events a handler could not apply after its retries, and the later events of
-- the same aggregate parked behind them.
CREATE TABLE @extschema@.es_dead_letters (
    id              bigserial PRIMARY KEY,
    consumer        text COLLATE "C" NOT NULL REFERENCES @extschema@.es_consumers ON DELETE CASCADE,
    event_id        text COLLATE "C" NOT NULL,
    tx_id           xid8 NOT NULL,
    position        bigint NOT NULL,
    aggregate_id    text COLLATE "C" NOT NULL,
    event_type      text COLLATE "C" NOT NULL,
    status          text NOT NULL CHECK (status IN ('dead', 'parked', 'retrying', 'resolved')),
    parked_behind   bigint REFERENCES @extschema@.es_dead_letters,
    error           text,
    attempts        integer NOT NULL DEFAULT 0,
    first_failed_at timestamptz,
    last_failed_at  timestamptz,
    resolved_at     timestamptz,
    UNIQUE (consumer, event_id)
);
CREATE INDEX es_dead_letters_open ON @extschema@.es_dead_letters (consumer, aggregate_id, tx_id, position)
    WHERE status <> 'resolved';
COMMENT ON SEQUENCE @extschema@.es_dead_letters_id_seq IS 'ultracore_es: dead letter ids';
COMMENT ON TABLE @extschema@.es_dead_letters IS
    'ultracore_es: events handlers gave up on (dead) and later events of their aggregates held back (parked)';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_consumers', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_handlers', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_handled', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_dead_letters', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_dead_letters_id_seq', '');

CREATE FUNCTION @extschema@.es_register_handler(
    name            text,
    function        regprocedure,
    event_types     text[] DEFAULT NULL,
    max_retries     integer DEFAULT 3,
    backoff         interval DEFAULT '1 second',
    replay_history  boolean DEFAULT false)
RETURNS void
AS 'MODULE_PATHNAME', 'es_register_handler' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_register_handler(text, regprocedure, text[], integer, interval, boolean) IS
    'ultracore_es: call function(event es_events) for each committed event (of event_types), in commit order, once, with max_retries retries and exponential backoff; from now, or from the first event with replay_history';

CREATE FUNCTION @extschema@.es_unregister_handler(name text)
RETURNS void
AS 'MODULE_PATHNAME', 'es_unregister_handler' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_unregister_handler(text) IS
    'ultracore_es: remove a handler, with its checkpoint, ledger and dead letters';

CREATE FUNCTION @extschema@.es_pause_handler(name text)
RETURNS void
AS 'MODULE_PATHNAME', 'es_pause_handler' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_pause_handler(text) IS
    'ultracore_es: stop delivering events to a handler (its checkpoint stays)';

CREATE FUNCTION @extschema@.es_resume_handler(name text, from_now boolean DEFAULT false)
RETURNS void
AS 'MODULE_PATHNAME', 'es_resume_handler' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_resume_handler(text, boolean) IS
    'ultracore_es: deliver events to a paused handler again, from its checkpoint or, with from_now, from the current horizon';

CREATE FUNCTION @extschema@.es_retry_dead_letter(id bigint)
RETURNS void
AS 'MODULE_PATHNAME', 'es_retry_dead_letter' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_retry_dead_letter(bigint) IS
    'ultracore_es: deliver a dead letter to its handler again (and then the events parked behind it)';

CREATE FUNCTION @extschema@.es_retry_dead_letters(handler text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'es_retry_dead_letters' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_retry_dead_letters(text) IS
    'ultracore_es: retry every dead letter of a handler; returns how many';

-- Unresolved dead letters, with their events.
CREATE VIEW @extschema@.es_dead_letter_queue AS
SELECT d.id, d.consumer AS handler, d.status, d.parked_behind, d.attempts, d.error,
       d.first_failed_at, d.last_failed_at, e.event_id, e.event_type, e.aggregate_type,
       e.aggregate_id, e.version, e.position, e.data
  FROM @extschema@.es_dead_letters d
  JOIN @extschema@.es_events e ON e.event_id OPERATOR(pg_catalog.=) d.event_id
 WHERE d.status OPERATOR(pg_catalog.<>) 'resolved';
COMMENT ON VIEW @extschema@.es_dead_letter_queue IS
    'ultracore_es: dead letters not resolved yet (dead, parked or retrying), with their events';

------------------------------------------------------------------------------
-- Built-in handlers (off until es_resume_handler switches one on): audit
-- trail, notification outbox, analytics counters.
------------------------------------------------------------------------------
CREATE TABLE @extschema@.es_audit_trail (
    position        bigint PRIMARY KEY,
    event_id        text COLLATE "C" NOT NULL,
    event_type      text COLLATE "C" NOT NULL,
    aggregate_type  text COLLATE "C" NOT NULL,
    aggregate_id    text COLLATE "C" NOT NULL,
    version         bigint NOT NULL,
    appended_by     text NOT NULL,
    recorded_at     timestamptz NOT NULL,
    causation_id    text,
    correlation_id  text,
    audited_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX es_audit_trail_role ON @extschema@.es_audit_trail (appended_by, recorded_at);
COMMENT ON TABLE @extschema@.es_audit_trail IS
    'ultracore_es: audit trail (handler es_audit_trail): every event, the role that appended it and when';

CREATE TABLE @extschema@.es_notification_outbox (
    id              bigserial PRIMARY KEY,
    event_id        text COLLATE "C" NOT NULL UNIQUE,
    event_type      text COLLATE "C" NOT NULL,
    aggregate_type  text COLLATE "C" NOT NULL,
    aggregate_id    text COLLATE "C" NOT NULL,
    payload         jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sending', 'sent', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    claimed_at      timestamptz,
    sent_at         timestamptz,
    last_error      text
);
CREATE INDEX es_notification_outbox_pending ON @extschema@.es_notification_outbox (id) WHERE status = 'pending';
COMMENT ON SEQUENCE @extschema@.es_notification_outbox_id_seq IS 'ultracore_es: notification ids, in the order senders claim them';
COMMENT ON TABLE @extschema@.es_notification_outbox IS
    'ultracore_es: notifications to send (handler es_notification_outbox); senders claim rows with FOR UPDATE SKIP LOCKED';

CREATE TABLE @extschema@.es_event_counts (
    minute          timestamptz NOT NULL,
    event_type      text COLLATE "C" NOT NULL,
    events          bigint NOT NULL,
    PRIMARY KEY (minute, event_type)
);
COMMENT ON TABLE @extschema@.es_event_counts IS
    'ultracore_es: analytics counters (handler es_analytics_counters): events per type per minute';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_audit_trail', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_notification_outbox', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_notification_outbox_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_event_counts', '');

CREATE FUNCTION @extschema@.es_audit_trail_handler(event @extschema@.es_events)
RETURNS void LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO @extschema@.es_audit_trail (position, event_id, event_type, aggregate_type, aggregate_id,
                                            version, appended_by, recorded_at, causation_id, correlation_id)
    VALUES ($1.position, $1.event_id, $1.event_type, $1.aggregate_type, $1.aggregate_id,
            $1.version, $1.appended_by, $1.recorded_at, $1.causation_id, $1.correlation_id)
$$;
COMMENT ON FUNCTION @extschema@.es_audit_trail_handler(@extschema@.es_events) IS
    'ultracore_es: built-in handler es_audit_trail: records the event, its appending role and time';

CREATE FUNCTION @extschema@.es_notification_handler(event @extschema@.es_events)
RETURNS void LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO @extschema@.es_notification_outbox (event_id, event_type, aggregate_type, aggregate_id, payload)
    VALUES ($1.event_id, $1.event_type, $1.aggregate_type, $1.aggregate_id,
            jsonb_build_object('event_id', $1.event_id, 'event_type', $1.event_type,
                               'aggregate_type', $1.aggregate_type, 'aggregate_id', $1.aggregate_id,
                               'version', $1.version, 'occurred_at', $1.occurred_at,
                               'correlation_id', $1.correlation_id, 'data', $1.data))
$$;
COMMENT ON FUNCTION @extschema@.es_notification_handler(@extschema@.es_events) IS
    'ultracore_es: built-in handler es_notification_outbox: queues a notification for the event';

CREATE FUNCTION @extschema@.es_analytics_handler(event @extschema@.es_events)
RETURNS void LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO @extschema@.es_event_counts AS c (minute, event_type, events)
    VALUES (date_trunc('minute', $1.recorded_at), $1.event_type, 1)
    ON CONFLICT (minute, event_type) DO UPDATE SET events = c.events + 1
$$;
COMMENT ON FUNCTION @extschema@.es_analytics_handler(@extschema@.es_events) IS
    'ultracore_es: built-in handler es_analytics_counters: counts events per type per minute';

-- Claim pending notifications for sending: rows no other sender holds.
CREATE FUNCTION @extschema@.es_claim_notifications(max_count integer DEFAULT 10)
RETURNS SETOF @extschema@.es_notification_outbox
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE @extschema@.es_notification_outbox o
       SET status = 'sending', claimed_at = now(), attempts = o.attempts + 1
     WHERE o.id IN (SELECT p.id FROM @extschema@.es_notification_outbox p
                     WHERE p.status = 'pending' ORDER BY p.id
                     LIMIT greatest(max_count, 0) FOR UPDATE SKIP LOCKED)
    RETURNING o.*
$$;
COMMENT ON FUNCTION @extschema@.es_claim_notifications(integer) IS
    'ultracore_es: take up to max_count pending notifications (FOR UPDATE SKIP LOCKED), marking them sending';

CREATE FUNCTION @extschema@.es_complete_notification(id bigint, error text DEFAULT NULL, give_up boolean DEFAULT false)
RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH done AS (
        UPDATE @extschema@.es_notification_outbox o
           SET status = CASE WHEN $2 IS NULL THEN 'sent' WHEN $3 THEN 'failed' ELSE 'pending' END,
               sent_at = CASE WHEN $2 IS NULL THEN now() END,
               last_error = $2
         WHERE o.id = $1 AND o.status = 'sending'
        RETURNING 1)
    SELECT count(*) > 0 FROM done
$$;
COMMENT ON FUNCTION @extschema@.es_complete_notification(bigint, text, boolean) IS
    'ultracore_es: a claimed notification was sent (error NULL), or failed: back to pending, or failed for good with give_up; false when it was not claimed';

-- The built-in handlers, off until es_resume_handler registers one (from
-- the present, as the calling role); then it is an ordinary handler, dumped
-- with the others, that es_pause_handler and es_unregister_handler switch off.
-- This catalog itself is part of the extension: it is not dumped.
CREATE TABLE @extschema@.es_builtin_handlers (
    name        text COLLATE "C" PRIMARY KEY,
    function    regprocedure NOT NULL,
    event_types text[] COLLATE "C",
    description text NOT NULL
);
COMMENT ON TABLE @extschema@.es_builtin_handlers IS
    'ultracore_es: the built-in handlers es_resume_handler switches on, with their default event types';
INSERT INTO @extschema@.es_builtin_handlers VALUES
    ('es_audit_trail', '@extschema@.es_audit_trail_handler(@extschema@.es_events)', NULL,
     'every event, the role that appended it and when, in es_audit_trail'),
    ('es_notification_outbox', '@extschema@.es_notification_handler(@extschema@.es_events)',
     ARRAY['CUSTOMER_CREATED', 'ACCOUNT_OPENED', 'ACCOUNT_CLOSED', 'ACCOUNT_FROZEN', 'PAYMENT_COMPLETED',
           'PAYMENT_FAILED', 'PAYMENT_REFUNDED', 'TRANSACTION_REVERSED', 'LOAN_APPROVED', 'LOAN_REJECTED',
           'LOAN_DISBURSED', 'LOAN_DEFAULTED', 'RISK_FRAUD_DETECTED'],
     'a row in es_notification_outbox per event of the configured types, for senders to claim'),
    ('es_analytics_counters', '@extschema@.es_analytics_handler(@extschema@.es_events)', NULL,
     'events per type per minute in es_event_counts');

------------------------------------------------------------------------------
-- Monitoring
------------------------------------------------------------------------------
CREATE FUNCTION @extschema@.es_store_counters(
    OUT worker_pid integer,
    OUT worker_started_at timestamptz,
    OUT counting_since timestamptz,
    OUT events_appended bigint,
    OUT appended_last_minute bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'es_store_counters' LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION @extschema@.es_store_counters() IS
    'ultracore_es: shared-memory counters of committed appends and the worker (NULLs when the library is not preloaded)';

CREATE FUNCTION @extschema@.es_consumer_counters(
    OUT consumer text,
    OUT events_applied bigint,
    OUT latency_p50_ms double precision,
    OUT latency_p99_ms double precision,
    OUT recent_latency_p50_ms double precision,
    OUT recent_latency_p99_ms double precision,
    OUT last_applied_at timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'es_consumer_counters' LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION @extschema@.es_consumer_counters() IS
    'ultracore_es: per-consumer shared-memory counters since the worker started: events applied, commit-to-applied latency (all, and the last minute or two)';

CREATE VIEW @extschema@.es_store_stats AS
SELECT s.worker_pid, s.worker_started_at, s.counting_since, s.events_appended,
       round(s.appended_last_minute / 60.0, 2) AS appended_per_second_last_minute,
       round(s.events_appended / greatest(extract(epoch FROM now() - s.counting_since), 1), 2)
           AS appended_per_second_since_start,
       (SELECT count(*) FROM @extschema@.es_dead_letters d WHERE d.status OPERATOR(pg_catalog.<>) 'resolved')
           AS dead_letters
  FROM @extschema@.es_store_counters() s;
COMMENT ON VIEW @extschema@.es_store_stats IS
    'ultracore_es: appends per second (last minute, since the server started), the worker, open dead letters';

CREATE VIEW @extschema@.es_stats AS
SELECT c.name AS consumer, c.kind, c.paused, s.appended_per_second_last_minute,
       s.appended_per_second_since_start, c.events_processed,
       k.latency_p50_ms, k.latency_p99_ms, k.recent_latency_p50_ms, k.recent_latency_p99_ms,
       (SELECT count(*) FROM (SELECT FROM @extschema@.es_events e
                               WHERE ROW(e.tx_id, e.position) OPERATOR(pg_catalog.>) ROW(c.checkpoint_tx, c.checkpoint_position)
                               LIMIT 1000000) l) AS lag_events,
       coalesce(extract(epoch FROM now() OPERATOR(pg_catalog.-)
                (SELECT e.recorded_at FROM @extschema@.es_events e
                  WHERE ROW(e.tx_id, e.position) OPERATOR(pg_catalog.>) ROW(c.checkpoint_tx, c.checkpoint_position)
                  ORDER BY e.tx_id, e.position LIMIT 1)), 0)::numeric(12, 3) AS lag_seconds,
       (SELECT count(*) FROM @extschema@.es_dead_letters d
         WHERE d.consumer OPERATOR(pg_catalog.=) c.name AND d.status OPERATOR(pg_catalog.<>) 'resolved') AS dead_letters,
       c.checkpoint_tx, c.checkpoint_position, c.last_processed_at, c.last_error, c.last_error_at
  FROM @extschema@.es_consumers c
  CROSS JOIN @extschema@.es_store_stats s
  LEFT JOIN @extschema@.es_consumer_counters() k ON k.consumer OPERATOR(pg_catalog.=) c.name
 -- The Kafka ingest reads topics, not the store: es_kafka_status shows it.
 WHERE c.name OPERATOR(pg_catalog.<>) 'kafka_ingest';
COMMENT ON VIEW @extschema@.es_stats IS
    'ultracore_es: per consumer: events processed, commit-to-applied latency (p50, p99), lag in events (up to 1,000,000) and seconds, open dead letters; with the store''s append rates';

CREATE VIEW @extschema@.es_handler_status AS
SELECT h.name AS handler, h.function, h.event_types, h.max_retries, h.backoff, h.run_as,
       EXISTS (SELECT FROM @extschema@.es_builtin_handlers b WHERE b.name OPERATOR(pg_catalog.=) h.name) AS builtin,
       CASE WHEN c.paused THEN 'paused'
            WHEN c.retry_event_id IS NOT NULL THEN 'retrying'
            ELSE 'running' END AS state,
       c.checkpoint_tx, c.checkpoint_position, c.events_processed, c.last_processed_at,
       c.retry_event_id, c.retry_attempts, c.retry_at, c.last_error, c.last_error_at,
       (SELECT count(*) FROM @extschema@.es_dead_letters d
         WHERE d.consumer OPERATOR(pg_catalog.=) h.name AND d.status IN ('dead', 'retrying')) AS dead_letters,
       (SELECT count(*) FROM @extschema@.es_dead_letters d
         WHERE d.consumer OPERATOR(pg_catalog.=) h.name AND d.status OPERATOR(pg_catalog.=) 'parked') AS parked
  FROM @extschema@.es_handlers h
  JOIN @extschema@.es_consumers c ON c.name OPERATOR(pg_catalog.=) h.name
UNION ALL
SELECT b.name, b.function, b.event_types, NULL, NULL, NULL, true, 'off',
       NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 0
  FROM @extschema@.es_builtin_handlers b
 WHERE NOT EXISTS (SELECT FROM @extschema@.es_handlers h WHERE h.name OPERATOR(pg_catalog.=) b.name);
COMMENT ON VIEW @extschema@.es_handler_status IS
    'ultracore_es: each handler: running, paused or retrying, its checkpoint, progress, retries and dead letters; built-in handlers not switched on show as off';

------------------------------------------------------------------------------
-- Projections and read models: functions that fold events into tables,
-- inline (in the append's transaction) or async (by the worker's consumer
-- engine, like handlers).
------------------------------------------------------------------------------

-- Registered projections.  An async one also has its consumer row (kind
-- 'projection') in es_consumers: checkpoint, progress, retries.
CREATE TABLE @extschema@.es_projections (
    name            text COLLATE "C" PRIMARY KEY
                    CHECK (name ~ '^[A-Za-z][A-Za-z0-9_.:-]*$' AND octet_length(name) <= 63),
    id              integer NOT NULL UNIQUE,
    function        regprocedure NOT NULL,
    event_types     text[] COLLATE "C",
    mode            text NOT NULL CHECK (mode IN ('inline', 'async')),
    reset_function  regprocedure,
    max_retries     integer NOT NULL DEFAULT 3 CHECK (max_retries >= 0),
    backoff         interval NOT NULL DEFAULT '1 second' CHECK (backoff >= '0'),
    run_as          regrole NOT NULL,
    registered_at   timestamptz NOT NULL DEFAULT now(),
    last_rebuild_at timestamptz,
    last_rebuild_duration interval,
    last_rebuild_events bigint
);
CREATE SEQUENCE @extschema@.es_projections_id_seq AS integer OWNED BY @extschema@.es_projections.id;
ALTER TABLE @extschema@.es_projections
    ALTER COLUMN id SET DEFAULT pg_catalog.nextval('@extschema@.es_projections_id_seq');
COMMENT ON TABLE @extschema@.es_projections IS
    'ultracore_es: projections: function(event es_events) folding events into read models, inline or async';
COMMENT ON SEQUENCE @extschema@.es_projections_id_seq IS
    'ultracore_es: projection ids, the objects their rebuilds lock';
CREATE TRIGGER es_projections_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON @extschema@.es_projections FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.es_catalog_changed();
ALTER TABLE @extschema@.es_projections ENABLE ALWAYS TRIGGER es_projections_changed;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_projections', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_projections_id_seq', '');

-- The guide's five read models: one row per aggregate, written only by their
-- projections.  Money is numeric.  Clients query the views below.
CREATE TABLE @extschema@.es_rm_customers (
    customer_id     text COLLATE "C" PRIMARY KEY,
    name            text,
    email           text,
    phone           text,
    address         jsonb,
    kyc_status      text NOT NULL,
    risk_rating     text,
    status          text NOT NULL,
    created_at      timestamptz,
    updated_at      timestamptz NOT NULL,
    version         bigint NOT NULL,
    last_position   bigint NOT NULL
);
CREATE TABLE @extschema@.es_rm_accounts (
    account_id      text COLLATE "C" PRIMARY KEY,
    customer_id     text COLLATE "C",
    account_type    text,
    currency        text,
    balance         numeric NOT NULL,
    daily_limit     numeric,
    overdraft_limit numeric,
    status          text NOT NULL,
    opened_at       timestamptz,
    closed_at       timestamptz,
    updated_at      timestamptz NOT NULL,
    version         bigint NOT NULL,
    last_position   bigint NOT NULL
);
CREATE INDEX es_rm_accounts_customer ON @extschema@.es_rm_accounts (customer_id);
CREATE TABLE @extschema@.es_rm_transactions (
    transaction_id  text COLLATE "C" PRIMARY KEY,
    account_id      text COLLATE "C",
    amount          numeric,
    currency        text,
    direction       text,
    description     text,
    status          text NOT NULL,
    created_at      timestamptz,
    posted_at       timestamptz,
    settled_at      timestamptz,
    reversed_at     timestamptz,
    reversal_reason text,
    failed_at       timestamptz,
    failure_reason  text,
    updated_at      timestamptz NOT NULL,
    version         bigint NOT NULL,
    last_position   bigint NOT NULL
);
CREATE INDEX es_rm_transactions_account ON @extschema@.es_rm_transactions (account_id, created_at);
CREATE TABLE @extschema@.es_rm_payments (
    payment_id      text COLLATE "C" PRIMARY KEY,
    from_account    text COLLATE "C",
    to_account      text COLLATE "C",
    amount          numeric,
    currency        text,
    status          text NOT NULL,
    initiated_at    timestamptz,
    authorized_at   timestamptz,
    completed_at    timestamptz,
    failed_at       timestamptz,
    failure_reason  text,
    refunded_at     timestamptz,
    refunded_amount numeric,
    cancelled_at    timestamptz,
    updated_at      timestamptz NOT NULL,
    version         bigint NOT NULL,
    last_position   bigint NOT NULL
);
CREATE INDEX es_rm_payments_from ON @extschema@.es_rm_payments (from_account);
CREATE TABLE @extschema@.es_rm_loans (
    loan_id         text COLLATE "C" PRIMARY KEY,
    customer_id     text COLLATE "C",
    product         text,
    requested_amount numeric,
    approved_amount numeric,
    interest_rate   numeric,
    term_months     integer,
    status          text NOT NULL,
    applied_at      timestamptz,
    approved_at     timestamptz,
    rejected_at     timestamptz,
    rejection_reason text,
    disbursed_at    timestamptz,
    disbursed_amount numeric,
    repaid_amount   numeric NOT NULL,
    repayments      integer NOT NULL,
    outstanding_balance numeric,
    defaulted_at    timestamptz,
    paid_off_at     timestamptz,
    updated_at      timestamptz NOT NULL,
    version         bigint NOT NULL,
    last_position   bigint NOT NULL
);
CREATE INDEX es_rm_loans_customer ON @extschema@.es_rm_loans (customer_id);
COMMENT ON TABLE @extschema@.es_rm_customers IS 'ultracore_es: rows of the read model es_customers (projection es_customers)';
COMMENT ON TABLE @extschema@.es_rm_accounts IS 'ultracore_es: rows of the read model es_accounts (projection es_accounts)';
COMMENT ON TABLE @extschema@.es_rm_transactions IS 'ultracore_es: rows of the read model es_transactions (projection es_transactions)';
COMMENT ON TABLE @extschema@.es_rm_payments IS 'ultracore_es: rows of the read model es_payments (projection es_payments)';
COMMENT ON TABLE @extschema@.es_rm_loans IS 'ultracore_es: rows of the read model es_loans (projection es_loans)';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_rm_customers', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_rm_accounts', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_rm_transactions', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_rm_payments', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_rm_loans', '');

CREATE VIEW @extschema@.es_customers AS
SELECT customer_id, name, email, phone, address, kyc_status, risk_rating, status, created_at, updated_at,
       version, last_position
  FROM @extschema@.es_rm_customers;
CREATE VIEW @extschema@.es_accounts AS
SELECT account_id, customer_id, account_type, currency, balance, daily_limit, overdraft_limit, status,
       opened_at, closed_at, updated_at, version, last_position
  FROM @extschema@.es_rm_accounts;
CREATE VIEW @extschema@.es_transactions AS
SELECT transaction_id, account_id, amount, currency, direction, description, status, created_at, posted_at,
       settled_at, reversed_at, reversal_reason, failed_at, failure_reason, updated_at, version, last_position
  FROM @extschema@.es_rm_transactions;
CREATE VIEW @extschema@.es_payments AS
SELECT payment_id, from_account, to_account, amount, currency, status, initiated_at, authorized_at,
       completed_at, failed_at, failure_reason, refunded_at, refunded_amount, cancelled_at, updated_at,
       version, last_position
  FROM @extschema@.es_rm_payments;
CREATE VIEW @extschema@.es_loans AS
SELECT loan_id, customer_id, product, requested_amount, approved_amount, interest_rate, term_months, status,
       applied_at, approved_at, rejected_at, rejection_reason, disbursed_at, disbursed_amount, repaid_amount,
       repayments, outstanding_balance, defaulted_at, paid_off_at, updated_at, version, last_position
  FROM @extschema@.es_rm_loans;
COMMENT ON VIEW @extschema@.es_customers IS
    'ultracore_es: read model: customers (name, contact, KYC status, risk rating, status), from the Customer events';
COMMENT ON VIEW @extschema@.es_accounts IS
    'ultracore_es: read model: accounts (customer, type, currency, balance, limits, status), from the Account events';
COMMENT ON VIEW @extschema@.es_transactions IS
    'ultracore_es: read model: transactions per account (amount, direction, created/posted/settled/reversed/failed), from the Transaction events';
COMMENT ON VIEW @extschema@.es_payments IS
    'ultracore_es: read model: payments (amount, status initiated/authorized/completed/failed/refunded/cancelled, timestamps), from the Payment events';
COMMENT ON VIEW @extschema@.es_loans IS
    'ultracore_es: read model: loans (application, approval or rejection, disbursement, repayments, default, outstanding balance), from the Loan events';

-- The projections that maintain them, in C.
CREATE FUNCTION @extschema@.es_project_customers(event @extschema@.es_events) RETURNS void
AS 'MODULE_PATHNAME', 'es_project_customers' LANGUAGE C VOLATILE PARALLEL UNSAFE;
CREATE FUNCTION @extschema@.es_project_accounts(event @extschema@.es_events) RETURNS void
AS 'MODULE_PATHNAME', 'es_project_accounts' LANGUAGE C VOLATILE PARALLEL UNSAFE;
CREATE FUNCTION @extschema@.es_project_transactions(event @extschema@.es_events) RETURNS void
AS 'MODULE_PATHNAME', 'es_project_transactions' LANGUAGE C VOLATILE PARALLEL UNSAFE;
CREATE FUNCTION @extschema@.es_project_payments(event @extschema@.es_events) RETURNS void
AS 'MODULE_PATHNAME', 'es_project_payments' LANGUAGE C VOLATILE PARALLEL UNSAFE;
CREATE FUNCTION @extschema@.es_project_loans(event @extschema@.es_events) RETURNS void
AS 'MODULE_PATHNAME', 'es_project_loans' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_project_customers(@extschema@.es_events) IS
    'ultracore_es: built-in projection es_customers: folds a Customer event into es_customers';
COMMENT ON FUNCTION @extschema@.es_project_accounts(@extschema@.es_events) IS
    'ultracore_es: built-in projection es_accounts: folds an Account event into es_accounts';
COMMENT ON FUNCTION @extschema@.es_project_transactions(@extschema@.es_events) IS
    'ultracore_es: built-in projection es_transactions: folds a Transaction event into es_transactions';
COMMENT ON FUNCTION @extschema@.es_project_payments(@extschema@.es_events) IS
    'ultracore_es: built-in projection es_payments: folds a Payment event into es_payments';
COMMENT ON FUNCTION @extschema@.es_project_loans(@extschema@.es_events) IS
    'ultracore_es: built-in projection es_loans: folds a Loan event into es_loans';

-- The built-in projections, off until es_register_projection(name) switches
-- one on.  Part of the extension: not dumped.
CREATE TABLE @extschema@.es_builtin_projections (
    name            text COLLATE "C" PRIMARY KEY,
    function        regprocedure NOT NULL,
    event_types     text[] COLLATE "C" NOT NULL,
    read_model      regclass NOT NULL,
    description     text NOT NULL
);
COMMENT ON TABLE @extschema@.es_builtin_projections IS
    'ultracore_es: the built-in projections (the guide''s read models) es_register_projection switches on';
INSERT INTO @extschema@.es_builtin_projections VALUES
    ('es_customers', '@extschema@.es_project_customers(@extschema@.es_events)',
     ARRAY['CUSTOMER_CREATED', 'CUSTOMER_UPDATED', 'CUSTOMER_KYC_COMPLETED', 'CUSTOMER_RISK_ASSESSED',
           'CUSTOMER_DEACTIVATED', 'CUSTOMER_REACTIVATED', 'CUSTOMER_ADDRESS_CHANGED'],
     '@extschema@.es_customers', 'customers: profile, KYC status, risk rating, status'),
    ('es_accounts', '@extschema@.es_project_accounts(@extschema@.es_events)',
     ARRAY['ACCOUNT_OPENED', 'ACCOUNT_BALANCE_UPDATED', 'ACCOUNT_LIMIT_CHANGED', 'ACCOUNT_STATUS_CHANGED',
           'ACCOUNT_FROZEN', 'ACCOUNT_UNFROZEN', 'ACCOUNT_CLOSED'],
     '@extschema@.es_accounts', 'accounts: customer, type, currency, balance, limits, status'),
    ('es_transactions', '@extschema@.es_project_transactions(@extschema@.es_events)',
     ARRAY['TRANSACTION_CREATED', 'TRANSACTION_POSTED', 'TRANSACTION_SETTLED', 'TRANSACTION_REVERSED',
           'TRANSACTION_FAILED'],
     '@extschema@.es_transactions', 'transactions per account: amount, direction, status'),
    ('es_payments', '@extschema@.es_project_payments(@extschema@.es_events)',
     ARRAY['PAYMENT_INITIATED', 'PAYMENT_AUTHORIZED', 'PAYMENT_COMPLETED', 'PAYMENT_FAILED',
           'PAYMENT_REFUNDED', 'PAYMENT_CANCELLED'],
     '@extschema@.es_payments', 'payments: amount, status, timestamps'),
    ('es_loans', '@extschema@.es_project_loans(@extschema@.es_events)',
     ARRAY['LOAN_APPLICATION_SUBMITTED', 'LOAN_APPROVED', 'LOAN_REJECTED', 'LOAN_DISBURSED',
           'LOAN_REPAYMENT_MADE', 'LOAN_DEFAULTED', 'LOAN_PAID_OFF', 'LOAN_RESTRUCTURED'],
     '@extschema@.es_loans', 'loans: application to repayment or default, outstanding balance');

CREATE FUNCTION @extschema@.es_register_projection(
    name            text,
    function        regprocedure DEFAULT NULL,
    event_types     text[] DEFAULT NULL,
    mode            text DEFAULT 'async',
    reset_function  regprocedure DEFAULT NULL,
    max_retries     integer DEFAULT 3,
    backoff         interval DEFAULT '1 second')
RETURNS void
AS 'MODULE_PATHNAME', 'es_register_projection' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_register_projection(text, regprocedure, text[], text, regprocedure, integer, interval) IS
    'ultracore_es: project events (of event_types) with function(event es_events), inline in the append''s transaction or async by the worker, from the first event; function NULL switches on a built-in read model';

CREATE FUNCTION @extschema@.es_unregister_projection(name text)
RETURNS void
AS 'MODULE_PATHNAME', 'es_unregister_projection' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_unregister_projection(text) IS
    'ultracore_es: stop a projection (its read model''s rows stay)';

CREATE FUNCTION @extschema@.es_rebuild_projection(name text, aggregate_id text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'es_rebuild_projection' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_rebuild_projection(text, text) IS
    'ultracore_es: replay a projection from the store, for one aggregate or all (NULL), in one transaction; returns the events replayed';

CREATE FUNCTION @extschema@.es_wait_for_projection(name text, "position" bigint,
                                                   timeout interval DEFAULT '5 seconds')
RETURNS boolean
AS 'MODULE_PATHNAME', 'es_wait_for_projection' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.es_wait_for_projection(text, bigint, interval) IS
    'ultracore_es: read-your-writes: wait until a projection has applied the event at position; false at the timeout';

CREATE VIEW @extschema@.es_projection_status AS
SELECT p.name, p.mode,
       EXISTS (SELECT FROM @extschema@.es_builtin_projections b
                WHERE b.name OPERATOR(pg_catalog.=) p.name AND b.function OPERATOR(pg_catalog.=) p.function) AS builtin,
       p.function, p.event_types,
       CASE WHEN p.mode OPERATOR(pg_catalog.=) 'inline' THEN coalesce(k.events_applied, 0)
            ELSE c.events_processed END AS events_processed,
       c.checkpoint_tx, c.checkpoint_position,
       CASE WHEN p.mode OPERATOR(pg_catalog.=) 'inline' THEN 0 ELSE s.lag_events END AS lag_events,
       CASE WHEN p.mode OPERATOR(pg_catalog.=) 'inline' THEN 0 ELSE s.lag_seconds END AS lag_seconds,
       p.last_rebuild_at, p.last_rebuild_duration, p.last_rebuild_events,
       c.last_error, c.last_error_at,
       CASE WHEN p.mode OPERATOR(pg_catalog.=) 'inline' THEN 'inline'
            WHEN c.paused THEN 'paused'
            WHEN c.retry_event_id IS NOT NULL THEN 'retrying'
            ELSE 'running' END AS state,
       (SELECT count(*) FROM @extschema@.es_dead_letters d
         WHERE d.consumer OPERATOR(pg_catalog.=) p.name AND d.status OPERATOR(pg_catalog.<>) 'resolved') AS dead_letters
  FROM @extschema@.es_projections p
  LEFT JOIN @extschema@.es_consumers c ON c.name OPERATOR(pg_catalog.=) p.name
  LEFT JOIN @extschema@.es_stats s ON s.consumer OPERATOR(pg_catalog.=) p.name
  LEFT JOIN @extschema@.es_consumer_counters() k ON k.consumer OPERATOR(pg_catalog.=) p.name;
COMMENT ON VIEW @extschema@.es_projection_status IS
    'ultracore_es: each projection: mode, events processed, checkpoint, lag in events and seconds, last rebuild, last error';

------------------------------------------------------------------------------
-- Kafka: the mirror (committed events to topics) and the ingest (topics to
-- appends), run by the background worker when ultracore_es.kafka_brokers is
-- set (src/kafka.c).
------------------------------------------------------------------------------

-- Where an aggregate type's events go; by default the topic is
-- ultracore_es.kafka_topic_prefix followed by the aggregate type.
CREATE TABLE @extschema@.es_kafka_routes (
    aggregate_type  text COLLATE "C" PRIMARY KEY,
    topic           text CHECK (topic ~ '^[A-Za-z0-9._-]+$' AND octet_length(topic) <= 249 AND topic NOT IN ('.', '..'))
);
COMMENT ON TABLE @extschema@.es_kafka_routes IS
    'ultracore_es: the Kafka topic of an aggregate type''s events (NULL: not mirrored); others go to kafka_topic_prefix || aggregate_type';

-- The ingest's offsets, written with the appended events.  epoch grows with
-- each assignment of the partition; a write with an older epoch is refused.
CREATE TABLE @extschema@.es_kafka_offsets (
    group_id        text NOT NULL,
    topic           text NOT NULL,
    partition       integer NOT NULL,
    next_offset     bigint,
    epoch           bigint NOT NULL,
    high_watermark  bigint,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);
COMMENT ON TABLE @extschema@.es_kafka_offsets IS
    'ultracore_es: per consumer group, topic and partition, the next offset to ingest (stored with the appends) and the brokers'' high watermark';

-- Messages the ingest could not append.
CREATE TABLE @extschema@.es_kafka_dead_letters (
    id              bigserial PRIMARY KEY,
    topic           text NOT NULL,
    partition       integer NOT NULL,
    "offset"        bigint NOT NULL,
    key             bytea,
    headers         jsonb NOT NULL,
    value           bytea,
    error           text NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX es_kafka_dead_letters_source ON @extschema@.es_kafka_dead_letters (topic, partition, "offset");
COMMENT ON TABLE @extschema@.es_kafka_dead_letters IS
    'ultracore_es: Kafka messages the ingest could not append (malformed, unknown type, version conflict, id reused), with the error';
COMMENT ON SEQUENCE @extschema@.es_kafka_dead_letters_id_seq IS 'ultracore_es: Kafka dead letter ids';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_kafka_routes', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_kafka_offsets', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_kafka_dead_letters', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_kafka_dead_letters_id_seq', '');

CREATE FUNCTION @extschema@.es_set_kafka_route(aggregate_type text, topic text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF $2 IS NOT NULL AND ($2 !~ '^[A-Za-z0-9._-]+$' OR octet_length($2) > 249 OR $2 IN ('.', '..')) THEN
        RAISE EXCEPTION 'invalid Kafka topic name "%"', $2
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Kafka topic names are 1 to 249 characters among ASCII letters, digits, ".", "_" and "-", and neither "." nor "..".',
                  HINT = 'Pass NULL as the topic to stop mirroring the aggregate type.';
    END IF;
    INSERT INTO @extschema@.es_kafka_routes AS r VALUES ($1, $2)
    ON CONFLICT ON CONSTRAINT es_kafka_routes_pkey DO UPDATE SET topic = excluded.topic;
END
$$;
COMMENT ON FUNCTION @extschema@.es_set_kafka_route(text, text) IS
    'ultracore_es: mirror an aggregate type''s events to topic (NULL: do not mirror them); the worker reads routes at each batch';

CREATE VIEW @extschema@.es_kafka_status AS
SELECT 'mirror'::text AS component, NULL::text AS group_id, NULL::text AS topic, NULL::integer AS partition,
       c.checkpoint_tx, c.checkpoint_position, s.lag_events, s.lag_seconds,
       c.events_processed AS events, c.last_processed_at AS last_acknowledged_at,
       s.latency_p50_ms, s.latency_p99_ms,
       NULL::bigint AS next_offset, NULL::bigint AS high_watermark, NULL::bigint AS consumer_lag,
       NULL::bigint AS dead_letters, c.last_error, c.last_error_at
  FROM @extschema@.es_consumers c
  LEFT JOIN @extschema@.es_stats s ON s.consumer OPERATOR(pg_catalog.=) c.name
 WHERE c.name OPERATOR(pg_catalog.=) 'kafka_mirror'
UNION ALL
SELECT 'ingest', o.group_id, o.topic, o.partition, NULL, NULL, NULL, NULL, NULL, o.updated_at, NULL, NULL,
       o.next_offset, o.high_watermark,
       greatest(o.high_watermark OPERATOR(pg_catalog.-) coalesce(o.next_offset, 0), 0),
       (SELECT count(*) FROM @extschema@.es_kafka_dead_letters d
         WHERE d.topic OPERATOR(pg_catalog.=) o.topic AND d.partition OPERATOR(pg_catalog.=) o.partition),
       c.last_error, c.last_error_at
  FROM @extschema@.es_kafka_offsets o
  LEFT JOIN @extschema@.es_consumers c ON c.name OPERATOR(pg_catalog.=) 'kafka_ingest';
COMMENT ON VIEW @extschema@.es_kafka_status IS
    'ultracore_es: the Kafka mirror (checkpoint, lag, last acknowledgement, commit-to-acknowledgement latency, last error) and, per ingested partition, the next offset, the brokers'' high watermark, the consumer lag and the dead letters';

------------------------------------------------------------------------------
-- Privileges: nothing for PUBLIC.  Tables are written only through the
-- functions above; reading them directly needs an explicit GRANT SELECT.
------------------------------------------------------------------------------
REVOKE ALL ON TABLE @extschema@.es_clusters, @extschema@.es_event_types, @extschema@.es_aggregates,
    @extschema@.es_events, @extschema@.es_aggregate_versions, @extschema@.es_reducers,
    @extschema@.es_upcasters, @extschema@.es_snapshot_policies, @extschema@.es_snapshots,
    @extschema@.es_snapshot_list, @extschema@.es_consumers, @extschema@.es_handlers, @extschema@.es_handled,
    @extschema@.es_dead_letters, @extschema@.es_dead_letter_queue, @extschema@.es_audit_trail,
    @extschema@.es_notification_outbox, @extschema@.es_event_counts, @extschema@.es_builtin_handlers,
    @extschema@.es_store_stats, @extschema@.es_stats, @extschema@.es_handler_status,
    @extschema@.es_projections, @extschema@.es_builtin_projections, @extschema@.es_rm_customers,
    @extschema@.es_rm_accounts, @extschema@.es_rm_transactions, @extschema@.es_rm_payments,
    @extschema@.es_rm_loans, @extschema@.es_customers, @extschema@.es_accounts, @extschema@.es_transactions,
    @extschema@.es_payments, @extschema@.es_loans, @extschema@.es_projection_status,
    @extschema@.es_kafka_routes, @extschema@.es_kafka_offsets, @extschema@.es_kafka_dead_letters,
    @extschema@.es_kafka_status FROM PUBLIC;
REVOKE ALL ON SEQUENCE @extschema@.es_events_position_seq FROM PUBLIC;
-- Every function of the extension, as created above.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT d.objid::regprocedure
               FROM pg_catalog.pg_depend d
              WHERE d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
                AND d.refobjid = (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'ultracore_es')
                AND d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                AND d.deptype = 'e'
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END $$;
