-- Snapshots: saved by hand, automatic, read, listed, deleted; loads start from them.
SELECT count(*) FROM es_append_batch('Account', 'SNAP-A1',
    (SELECT jsonb_agg(jsonb_build_object('event_type', CASE WHEN g = 1 THEN 'ACCOUNT_OPENED' ELSE 'ACCOUNT_BALANCE_UPDATED' END,
                                         'data', jsonb_build_object('balance', g * 10, 'step', g)))
       FROM generate_series(1, 10) g), expected_version => 0);

-- By hand: the state the reducer folds, at the current version or another.
SELECT es_save_snapshot('SNAP-A1');
SELECT es_save_snapshot('SNAP-A1', version => 4);
SELECT aggregate_id, version, aggregate_type, state, reducer, automatic FROM es_get_snapshot('SNAP-A1');
SELECT version, state FROM es_get_snapshot('SNAP-A1', max_version => 9);
SELECT count(*) FROM es_get_snapshot('SNAP-A1', max_version => 3);
-- Or a state given (the guide's create_snapshot(state)): saved when it is
-- the fold of the events up to that version.
SELECT es_save_snapshot('SNAP-A1', 6, '{"balance": 60, "step": 6}', aggregate_type => 'Account');
-- A state the events do not give is refused, with both in the detail: a
-- load can never return it.  So are a made-up array and a 10 MB state.
SELECT es_test.error_of($$SELECT es_save_snapshot('SNAP-A1', 2, '{"balance": "999"}')$$);
SELECT es_test.error_of($$SELECT es_save_snapshot('SNAP-A1', 2, '[1, 2]')$$);
SELECT left(es_test.error_of($$SELECT es_save_snapshot('SNAP-A1', 2, jsonb_build_object('blob', repeat('x', 10000000)))$$), 160);
SELECT state FROM es_load_aggregate('SNAP-A1', at_version => 2);
SELECT aggregate_id, version, automatic, usable, state_bytes > 0 AS has_state FROM es_list_snapshots('SNAP-A1');
-- Loads start from the latest snapshot at or below the wanted version.
SELECT state, version, snapshot_version, events_applied FROM es_load_aggregate('SNAP-A1');
SELECT state, version, snapshot_version, events_applied FROM es_load_aggregate('SNAP-A1', at_version => 7);
SELECT state, version, snapshot_version, events_applied FROM es_load_aggregate('SNAP-A1', at_version => 5);
SELECT state, version, snapshot_version, events_applied FROM es_load_aggregate('SNAP-A1', at_version => 3);

-- Snapshots that cannot be.
SELECT es_test.error_of($$SELECT es_save_snapshot('NO-SUCH')$$);
SELECT es_test.error_of($$SELECT es_save_snapshot('SNAP-A1', 11)$$);
SELECT es_test.error_of($$SELECT es_save_snapshot('SNAP-A1', 0)$$);
SELECT es_test.error_of($$SELECT es_save_snapshot('SNAP-A1', 2, aggregate_type => 'Customer')$$);
SELECT es_test.error_of($$SELECT es_save_snapshot(NULL)$$);
SELECT es_test.error_of($$SELECT * FROM es_get_snapshot('NO-SUCH')$$);

-- Deleting: below a version, then all of an aggregate.
SELECT es_delete_snapshots('SNAP-A1', below_version => 6);
SELECT version FROM es_list_snapshots('SNAP-A1');
SELECT es_delete_snapshots(aggregate_id => 'SNAP-A1');
SELECT count(*) FROM es_list_snapshots('SNAP-A1');
SELECT snapshot_version, events_applied FROM es_load_aggregate('SNAP-A1');

-- Automatic snapshots: every 4 events of a Payment, taken by the append that
-- reaches the multiple, in its transaction.
SELECT es_set_snapshot_policy('Payment', 4);
SELECT aggregate_type, every_n_events FROM es_snapshot_policies;
SELECT version FROM es_append('Payment', 'SNAP-P1', 'PAYMENT_INITIATED', '{"amount": 100, "status": "initiated"}', 0);
SELECT count(*) FROM es_append_batch('Payment', 'SNAP-P1',
    (SELECT jsonb_agg(jsonb_build_object('event_type', 'PAYMENT_AUTHORIZED', 'data', jsonb_build_object('step', g)))
       FROM generate_series(2, 9) g));
SELECT version FROM es_append('Payment', 'SNAP-P1', 'PAYMENT_COMPLETED', '{"status": "completed"}', 9);
SELECT version, automatic, usable, taken_by = current_user AS by_appender FROM es_list_snapshots('SNAP-P1');
SELECT version, state FROM es_get_snapshot('SNAP-P1');
SELECT state, version, snapshot_version, events_applied FROM es_load_aggregate('SNAP-P1');
-- A rolled-back append takes its snapshot with it.
BEGIN;
SELECT count(*) FROM es_append_batch('Payment', 'SNAP-P1', '[{"event_type": "PAYMENT_REFUNDED"}, {"event_type": "PAYMENT_REFUNDED"}]');
SELECT version FROM es_list_snapshots('SNAP-P1');
ROLLBACK;
SELECT version FROM es_list_snapshots('SNAP-P1');
-- Policies that cannot be; removing one.
SELECT es_test.error_of($$SELECT es_set_snapshot_policy('Payment', -1)$$);
SELECT es_test.error_of($$SELECT es_set_snapshot_policy(NULL, 5)$$);
SELECT es_set_snapshot_policy('Payment', NULL);
SELECT count(*) FROM es_snapshot_policies;
SELECT count(*) FROM es_append_batch('Payment', 'SNAP-P1', '[{"event_type": "PAYMENT_REFUNDED"}, {"event_type": "PAYMENT_REFUNDED"}]');
SELECT max(version) FROM es_list_snapshots('SNAP-P1');
