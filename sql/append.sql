-- es_append: versions, expected-version modes, conflicts, results.
SELECT * FROM es_test.state();

-- A new aggregate: version 1, a generated UUID as event id, a position.
SELECT event_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$' AS uuid_v7,
       version, position > 0 AS has_position
  FROM es_append('Customer', 'CUST001', 'CUSTOMER_CREATED',
                 '{"name": "John Doe", "email": "john@example.com"}', expected_version => 0);
-- Time-ordered (RFC 9562 version 7): its first 48 bits are the append's
-- Unix time in milliseconds, and ids made one after another sort in order.
SELECT abs(('x' || lpad(replace(left(event_id, 13), '-', ''), 16, '0'))::bit(64)::bigint
           - floor(extract(epoch FROM recorded_at) * 1000)::bigint) <= 1 AS time_of_append
  FROM es_events WHERE aggregate_id = 'CUST001';
SELECT bool_and(event_id > lag) AS ids_in_order, count(*)
  FROM (SELECT event_id, lag(event_id) OVER (ORDER BY position)
          FROM es_append_batch('Customer', 'CUST-IDS',
                               (SELECT jsonb_agg('{"event_type": "CUSTOMER_UPDATED"}'::jsonb) FROM generate_series(1, 200)))
       ) s WHERE lag IS NOT NULL;

-- Named notation with every parameter.
SELECT event_id, version
  FROM es_append(aggregate_type => 'Customer', aggregate_id => 'CUST001',
                 event_type => 'CUSTOMER_UPDATED', data => '{"email": "john.doe@example.com"}',
                 expected_version => 1, metadata => '{"user_agent": "teller-app"}',
                 event_id => 'evt_12345', causation_id => 'cmd_67890',
                 correlation_id => 'req_abcde', occurred_at => '2025-01-14 10:00:00+00');

-- Stored as given; appended_by is the calling role; tx_id is this transaction's.
SELECT CASE WHEN event_id ~ '^[0-9a-f-]{36}$' THEN '(uuid)' ELSE event_id END AS event_id,
       event_type, aggregate_type, aggregate_id, version,
       CASE WHEN occurred_at = recorded_at THEN '(append time)' ELSE occurred_at::text END AS occurred_at,
       causation_id, correlation_id, data, metadata, schema_version, appended_by = current_user AS by_me
  FROM es_events WHERE aggregate_id = 'CUST001' ORDER BY version;
SELECT count(DISTINCT tx_id) AS transactions FROM es_events WHERE aggregate_id = 'CUST001';

-- Expected versions: NULL = any, N = exactly N, -1 = must exist, 0 = must not exist.
SELECT version FROM es_append('Customer', 'CUST001', 'CUSTOMER_KYC_COMPLETED', '{"level": "full"}');
SELECT version FROM es_append('Customer', 'CUST001', 'CUSTOMER_RISK_ASSESSED', '{"rating": "low"}', 3);
SELECT version FROM es_append('Customer', 'CUST001', 'CUSTOMER_UPDATED', '{"phone": "+61400000000"}', -1);
SELECT version FROM es_append('Customer', 'CUST002', 'CUSTOMER_CREATED', '{"name": "Jane"}');
SELECT es_aggregate_version('CUST001') AS cust001, es_aggregate_version('CUST002') AS cust002,
       es_aggregate_version('NOBODY') AS nobody;

-- Conflicts: the dedicated SQLSTATE, with aggregate, expected and actual version.
SELECT * FROM es_test.state() \gset before_
SELECT es_test.error_of($$SELECT es_append('Customer', 'CUST001', 'CUSTOMER_UPDATED', '{}', 3)$$);
SELECT es_test.error_of($$SELECT es_append('Customer', 'CUST001', 'CUSTOMER_UPDATED', '{}', 0)$$);
SELECT es_test.error_of($$SELECT es_append('Customer', 'CUST999', 'CUSTOMER_UPDATED', '{}', -1)$$);
SELECT es_test.error_of($$SELECT es_append('Customer', 'CUST999', 'CUSTOMER_UPDATED', '{}', 4)$$);
-- The losers wrote nothing and burned no position.
SELECT events = :before_events AS same_events, aggregates = :before_aggregates AS same_aggregates,
       last_position = :before_last_position AS no_position_taken
  FROM es_test.state();
SELECT position = :before_last_position + 1 AS next_position_follows
  FROM es_append('Customer', 'CUST001', 'CUSTOMER_UPDATED', '{"name": "John A. Doe"}', 5);

-- The conflict as a client sees it.
\set VERBOSITY default
SELECT es_append('Customer', 'CUST001', 'CUSTOMER_DEACTIVATED', '{}', expected_version => 2);
\set VERBOSITY sqlstate
SELECT es_append('Customer', 'CUST001', 'CUSTOMER_DEACTIVATED', '{}', expected_version => 2);
\set VERBOSITY default

-- An aggregate's type is fixed by its first event.
SELECT es_test.error_of($$SELECT es_append('Account', 'CUST001', 'ACCOUNT_OPENED', '{}')$$);

-- Several appends to one aggregate in one statement see each other.
SELECT version FROM generate_series(1, 3) g,
       LATERAL es_append('Account', 'ACC-MULTI', 'ACCOUNT_BALANCE_UPDATED',
                         jsonb_build_object('balance', g * 10), expected_version => g - 1);
-- And in one transaction, with a rollback to a savepoint in between.
BEGIN;
SELECT version FROM es_append('Account', 'ACC-MULTI', 'ACCOUNT_LIMIT_CHANGED', '{"limit": 500}', 3);
SAVEPOINT s;
SELECT version FROM es_append('Account', 'ACC-MULTI', 'ACCOUNT_LIMIT_CHANGED', '{"limit": 900}', 4);
ROLLBACK TO SAVEPOINT s;
SELECT version FROM es_append('Account', 'ACC-MULTI', 'ACCOUNT_STATUS_CHANGED', '{"status": "active"}', 4);
COMMIT;
SELECT version, event_type, data FROM es_get_events('ACC-MULTI');

-- Positions grow with versions, and every event of a transaction shares its tx_id.
SELECT bool_and(position > prev_position) AS positions_grow,
       bool_and(tx_id >= prev_tx) AS tx_ids_grow
  FROM (SELECT position, tx_id, lag(position) OVER w AS prev_position, lag(tx_id) OVER w AS prev_tx
          FROM es_events WHERE aggregate_id = 'ACC-MULTI' WINDOW w AS (ORDER BY version)) s
 WHERE prev_position IS NOT NULL;

-- The key is a transaction id of the appender's own, assigned at its first
-- append: its top id when it had none, else a new subtransaction's, never
-- below its top id (what a snapshot's xmin as commit horizon relies on).
BEGIN;
SELECT version FROM es_append('Account', 'ACC-KEY1', 'ACCOUNT_OPENED', '{}', 0);
SELECT version FROM es_append('Account', 'ACC-KEY1', 'ACCOUNT_LIMIT_CHANGED', '{"limit": 10}', 1);
SELECT count(*) AS events, bool_and(tx_id = pg_current_xact_id()) AS own_top_id
  FROM es_events WHERE aggregate_id = 'ACC-KEY1';
SELECT pid = pg_backend_pid() AS me, xid = pg_current_xact_id() AS holds_at_key FROM es_horizon_holders();
COMMIT;
SELECT count(*) AS holders_after_commit FROM es_horizon_holders() WHERE pid = pg_backend_pid();
BEGIN;
SELECT pg_current_xact_id() AS top_id \gset
SELECT version FROM es_append('Account', 'ACC-KEY2', 'ACCOUNT_OPENED', '{}', 0);
SELECT tx_id > :'top_id'::xid8 AS above_top_id, pg_xact_status(tx_id) AS status
  FROM es_events WHERE aggregate_id = 'ACC-KEY2';
COMMIT;

-- A rolled-back append leaves no trace but its position (sequences are not transactional).
-- The lock of an existing aggregate is held in the lock manager until the
-- transaction ends (an advisory lock with objsubid 17747), not in its row.
BEGIN;
SELECT version FROM es_append('Account', 'ACC-ROLLBACK', 'ACCOUNT_OPENED', '{}', 0);
SELECT version FROM es_append('Customer', 'CUST001', 'CUSTOMER_UPDATED', '{"email": "lock@example.org"}');
SELECT locktype, mode, objsubid FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory';
ROLLBACK;
SELECT count(*) FROM es_aggregates WHERE aggregate_id = 'ACC-ROLLBACK';
SELECT count(*) AS locked_in_its_row FROM es_aggregates WHERE aggregate_id = 'CUST001' AND xmax <> '0';
SELECT version FROM es_append('Account', 'ACC-ROLLBACK', 'ACCOUNT_OPENED', '{}', 0);

-- The aggregates, listable with their current versions.
SELECT aggregate_id, aggregate_type, version
  FROM es_aggregate_versions WHERE aggregate_id LIKE 'CUST00%' OR aggregate_id LIKE 'ACC-%' ORDER BY 1;

-- Gaps: what refuses after the insert (here a reducer refusing the automatic
-- snapshot) rolls the events back but not their positions.  A reader in
-- commit order goes over the gap and misses nothing.
CREATE FUNCTION es_test.refuse_gap(state jsonb, event es_events) RETURNS jsonb LANGUAGE sql
    AS $$ SELECT CASE WHEN event.data ? 'refuse' THEN NULL ELSE coalesce(state, '{}') || event.data END $$;
SELECT es_register_reducer('Account', 'es_test.refuse_gap(jsonb, es_events)');
SELECT es_set_snapshot_policy('Account', 1);
SELECT version FROM es_append('Account', 'ACC-GAP', 'ACCOUNT_OPENED', '{}', 0);
SELECT tx_id AS gap_tx, position AS gap_pos FROM es_get_events('ACC-GAP') \gset
SELECT es_test.error_of($$SELECT es_append('Account', 'ACC-GAP', 'ACCOUNT_BALANCE_UPDATED', '{"refuse": true}', 1)$$);
SELECT position > :gap_pos + 1 AS gap_left, version
  FROM es_append('Account', 'ACC-GAP', 'ACCOUNT_BALANCE_UPDATED', '{"balance": 5}', 1);
SELECT aggregate_id, version FROM es_read_all(:'gap_tx', :gap_pos, aggregate_type => 'Account');
SELECT es_set_snapshot_policy('Account', NULL);
SELECT es_register_reducer('Account', NULL);
DELETE FROM es_snapshots WHERE aggregate_id = 'ACC-GAP';
