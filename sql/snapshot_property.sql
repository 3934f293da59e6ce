-- Property: for many generated aggregates, with automatic and manual
-- snapshots, the load at every version equals the fold of the events up to
-- that version without any snapshot (an SQL aggregate over es_get_events,
-- one reducer call per event: an independent path), for the default reducer
-- and for a registered one.
SELECT setseed(0.42);
CREATE FUNCTION es_test.ledger_reducer(state jsonb, event es_events) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'balance', coalesce((state->>'balance')::numeric, 0) + coalesce((event.data->>'amount')::numeric, 0),
        'count', coalesce((state->>'count')::int, 0) + 1,
        'last', event.event_type)
$$;
CREATE AGGREGATE es_test.ledger_fold(es_events) (SFUNC = es_test.ledger_reducer, STYPE = jsonb, INITCOND = '{}');
SELECT es_register_reducer('Transaction', 'es_test.ledger_reducer(jsonb, es_events)');
SELECT es_set_snapshot_policy('Customer', 7);
SELECT es_set_snapshot_policy('Transaction', 5);

-- 40 customers and 40 ledgers of 1 to 60 events, appended in batches of random sizes.
CREATE TABLE es_test.gen AS
SELECT 'PROP-' || kind || '-' || a AS aggregate_id, kind, 1 + floor(random() * 60)::int AS events
  FROM generate_series(1, 40) a, (VALUES ('C'), ('T')) k(kind);
DO $$
DECLARE
    g record;
    done int;
    n int;
BEGIN
    FOR g IN SELECT * FROM es_test.gen ORDER BY aggregate_id LOOP
        done := 0;
        WHILE done < g.events LOOP
            n := least(g.events - done, 1 + floor(random() * 9)::int);
            PERFORM es_append_batch(
                CASE g.kind WHEN 'C' THEN 'Customer' ELSE 'Transaction' END, g.aggregate_id,
                (SELECT jsonb_agg(jsonb_build_object(
                    'event_type', CASE WHEN g.kind = 'C' AND done + i = 1 THEN 'CUSTOMER_CREATED'
                                       WHEN g.kind = 'C' AND random() < 0.1 THEN 'CUSTOMER_CREATED'
                                       WHEN g.kind = 'C' THEN 'CUSTOMER_UPDATED'
                                       WHEN done + i = 1 THEN 'TRANSACTION_CREATED'
                                       ELSE 'TRANSACTION_POSTED' END,
                    'data', jsonb_build_object('k' || floor(random() * 6)::int, round(random() * 1000),
                                               'amount', round((random() * 200 - 100)::numeric, 2))) ORDER BY i)
                   FROM generate_series(1, n) i),
                expected_version => done);
            done := done + n;
        END LOOP;
        -- and a manual snapshot at a random version
        PERFORM es_save_snapshot(g.aggregate_id, 1 + floor(random() * g.events)::bigint);
    END LOOP;
END $$;
SELECT count(*) AS aggregates, sum(events) AS events FROM es_test.gen;
SELECT count(*) > 40 AS many_snapshots, bool_and(usable) AS all_usable
  FROM es_list_snapshots() WHERE aggregate_id LIKE 'PROP-%';

-- Every version of every aggregate: load (snapshots) = fold (no snapshot).
SELECT count(*) AS versions_checked,
       count(*) FILTER (WHERE l.state IS DISTINCT FROM f.state) AS mismatches,
       count(*) FILTER (WHERE l.snapshot_version IS NOT NULL) > 0 AS snapshots_used
  FROM es_test.gen g
 CROSS JOIN LATERAL generate_series(1, g.events) v
 CROSS JOIN LATERAL es_load_aggregate(g.aggregate_id, at_version => v) l
 CROSS JOIN LATERAL (SELECT CASE g.kind WHEN 'C' THEN es_test.fold(e ORDER BY e.version)
                                        ELSE es_test.ledger_fold(e ORDER BY e.version) END AS state
                       FROM es_get_events(g.aggregate_id, to_version => v) e) f;
-- And the loads fold no more than the policy allows after a snapshot.
SELECT max(l.events_applied) FILTER (WHERE g.kind = 'C') <= 6 AS customers_bounded,
       max(l.events_applied) FILTER (WHERE g.kind = 'T') <= 4 AS ledgers_bounded
  FROM es_test.gen g CROSS JOIN LATERAL es_load_aggregate(g.aggregate_id) l;

SELECT es_set_snapshot_policy('Customer', NULL);
SELECT es_set_snapshot_policy('Transaction', NULL);
SELECT es_register_reducer('Transaction', NULL);
