-- Commit order across clusters: a store restored into another cluster keeps
-- growing transaction ids, so checkpoints taken before the restore stay valid.
--
-- Simulated: a restored event whose transaction id is far above this
-- cluster's counter, and the store's record naming another cluster.
SELECT es_commit_horizon() AS horizon_before \gset
INSERT INTO es_aggregates VALUES ('RESTORED-1', 'Account', now());
INSERT INTO es_events (event_id, event_type, aggregate_type, aggregate_id, version, tx_id, occurred_at,
                       recorded_at, data, metadata, schema_version, appended_by)
VALUES ('evt_restored', 'ACCOUNT_OPENED', 'Account', 'RESTORED-1', 1,
        (pg_current_xact_id()::text::bigint + 1000000000)::text::xid8, now(), now(), '{}', '{}', 1, 'restore');
UPDATE es_clusters SET system_identifier = 42;
-- A reader checkpointed at the restored event.
SELECT tx_id AS restored_tx, position AS restored_pos FROM es_events WHERE event_id = 'evt_restored' \gset
\c
-- Before any append, readers already see a horizon above every restored event.
SELECT es_commit_horizon() > :'restored_tx'::xid8 AS horizon_above_restored;
SELECT count(*) AS rows_for_this_cluster FROM es_clusters
 WHERE system_identifier = (SELECT system_identifier FROM pg_control_system());
-- The first append re-bases the store and lands after the restored event.
SELECT version FROM es_append('Account', 'RESTORED-1', 'ACCOUNT_BALANCE_UPDATED', '{"balance": 5}', 1);
SELECT system_identifier = (SELECT system_identifier FROM pg_control_system()) AS this_cluster,
       xid_offset > 0 AS offset_set
  FROM es_clusters ORDER BY first_append_at;
SELECT tx_id > :'restored_tx'::xid8 AS after_restored FROM es_events
 WHERE aggregate_id = 'RESTORED-1' AND version = 2;
-- The reader resumes from its checkpoint and misses nothing.
SELECT aggregate_id, version FROM es_read_all(:'restored_tx', :restored_pos);
-- Every backend agrees on the offset.
SELECT xid_offset AS offset_now FROM es_clusters
 WHERE system_identifier = (SELECT system_identifier FROM pg_control_system()) \gset
\c
SELECT count(*) AS rows_for_this_cluster, bool_and(xid_offset = :offset_now) AS same_offset FROM es_clusters
 WHERE system_identifier = (SELECT system_identifier FROM pg_control_system());
SELECT version FROM es_append('Account', 'RESTORED-1', 'ACCOUNT_BALANCE_UPDATED', '{"balance": 6}', 2);
SELECT count(*) FROM es_read_all(:'restored_tx', :restored_pos);
