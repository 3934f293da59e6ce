-- es_events is partitioned by position (ultracore_es.partition_events =
-- 1000 in test/regress.conf).  5,000 events spread over at least five
-- partitions; reads across their bounds; event ids unique across them
-- (the key table); versions contiguous across them; the append-only
-- refusal on each; the DEFAULT partition for appends past the ranges.
SHOW ultracore_es.partition_events;
SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS start FROM es_events_position_seq \gset

-- The worker's reach, made now: 6,000 positions of ranges ahead.
SELECT es_make_partitions(6000) >= 0 AS made;
SELECT count(*) >= 6 AS ranges_ahead
  FROM es_partitions WHERE NOT is_default AND to_position > :start;

-- 5,000 events over 50 accounts, in batches of 10.
SELECT count(*) AS batches FROM (
    SELECT es_append_batch('Account', 'PART-' || (b % 50),
                           (SELECT jsonb_agg(jsonb_build_object('event_type', CASE WHEN b < 50 AND i = 1 THEN 'ACCOUNT_OPENED' ELSE 'ACCOUNT_BALANCE_UPDATED' END,
                                                                'data', jsonb_build_object('n', b * 10 + i)))
                              FROM generate_series(1, 10) i), NULL)
      FROM generate_series(0, 499) b) x;

-- Every event in a range partition, at least five of them holding some.
SELECT count(*) AS events, count(DISTINCT tableoid) >= 5 AS five_partitions,
       bool_and(tableoid::regclass::text LIKE 'es_events_0%') AS all_in_ranges
  FROM es_events WHERE aggregate_id LIKE 'PART-%';
-- Each event in the partition its position belongs to.
SELECT count(*) AS misplaced
  FROM es_events e JOIN es_partitions p ON p.partition = e.tableoid
 WHERE NOT p.is_default AND NOT (e.position >= coalesce(p.from_position, e.position)
                                AND e.position < coalesce(p.to_position, e.position + 1));

-- An aggregate's events span the partitions; read in version order, without a gap.
SELECT count(*) AS events, count(DISTINCT tableoid) > 1 AS across_partitions,
       min(version) AS first, max(version) AS last,
       bool_and(version = rn) AS contiguous
  FROM (SELECT e.*, e.tableoid, row_number() OVER (ORDER BY e.version) AS rn
          FROM es_events e WHERE e.aggregate_id = 'PART-7') x;
SELECT count(*) AS read, bool_and(version = rn) AS in_order
  FROM (SELECT g.version, row_number() OVER () AS rn FROM es_get_events('PART-7') g) x;
SELECT (es_load_aggregate('PART-7')).version AS loaded_version;
SELECT es_aggregate_version('PART-7') AS current_version;

-- Commit order across the partitions: es_read_all pages them all, each once, in order.
SELECT count(*) AS read_all, count(DISTINCT position) AS distinct_positions,
       bool_and(lag_tx IS NULL OR (tx_id, position) > (lag_tx, lag_position)) AS in_commit_order
  FROM (SELECT r.tx_id, r.position, lag(r.tx_id) OVER w AS lag_tx, lag(r.position) OVER w AS lag_position
          FROM es_read_all(max_count => 100000) r WHERE r.aggregate_id LIKE 'PART-%'
        WINDOW w AS ()) x;

-- An event id stored in an older partition: the retry returns it, another content is refused.
SELECT es_append('Account', 'PART-ID', 'ACCOUNT_OPENED', '{"x": 1}', 0, event_id => 'part-event-1') IS NOT NULL AS stored;
SELECT es_make_partitions(3000) >= 0 AS made;
SELECT count(*) AS moved_on FROM (
    SELECT es_append('Account', 'PART-FILL', 'ACCOUNT_BALANCE_UPDATED', '{}', NULL) FROM generate_series(1, 1500)) x;
SELECT (SELECT tableoid FROM es_events WHERE event_id = 'part-event-1')
       <> (SELECT tableoid FROM es_events WHERE aggregate_id = 'PART-FILL' ORDER BY version DESC LIMIT 1) AS other_partition;
SELECT version FROM es_append('Account', 'PART-ID', 'ACCOUNT_OPENED', '{"x": 1}', 0, event_id => 'part-event-1');
SELECT version FROM es_append('Account', 'PART-OTHER', 'ACCOUNT_OPENED', '{"x": 2}', 0, event_id => 'part-event-1');
SELECT es_event_position('part-event-1') = (SELECT position FROM es_events WHERE event_id = 'part-event-1') AS position_ok,
       es_event_position('no-such-event') IS NULL AS unknown_null;

-- The next version of an aggregate whose last event is in an older partition.
SELECT version FROM es_append('Account', 'PART-ID', 'ACCOUNT_BALANCE_UPDATED', '{}', 1);
SELECT count(DISTINCT tableoid) AS partitions, array_agg(version ORDER BY version) AS versions
  FROM es_events WHERE aggregate_id = 'PART-ID';

-- Every partition refuses changes, as es_events does.
UPDATE es_events SET data = '{}' WHERE aggregate_id = 'PART-ID';
DELETE FROM es_events_overflow;
TRUNCATE es_events_overflow;
SELECT format('UPDATE %s SET data = ''{}''', partition) AS upd FROM es_partitions
 WHERE NOT is_default ORDER BY from_position DESC NULLS LAST LIMIT 1 \gset
\set VERBOSITY sqlstate
:upd;
\set VERBOSITY default
SELECT count(*) AS unprotected FROM es_partitions p
 WHERE NOT EXISTS (SELECT FROM pg_trigger t WHERE t.tgrelid = p.partition AND t.tgname = 'es_events_append_only'
                     AND t.tgenabled = 'A');

-- Past the ranges made, appends go to the DEFAULT partition; the next
-- ranges start above them.  (The lock holds the worker's ATTACH off: it
-- never waits for one.)
BEGIN;
LOCK TABLE es_events_overflow IN ACCESS SHARE MODE;
SELECT max(to_position) AS last_bound FROM es_partitions WHERE NOT is_default \gset
SELECT setval('es_events_position_seq', :last_bound + 10) IS NOT NULL AS jumped;
SELECT version FROM es_append('Account', 'PART-OVER', 'ACCOUNT_OPENED', '{}', 0);
SELECT e.tableoid::regclass AS partition FROM es_events e WHERE e.aggregate_id = 'PART-OVER';
COMMIT;
SELECT es_make_partitions(1000) >= 0 AS made;
SELECT min(from_position) > :last_bound + 11 AS above_the_default_rows
  FROM es_partitions WHERE NOT is_default AND from_position >= :last_bound;
SELECT version FROM es_append('Account', 'PART-OVER', 'ACCOUNT_BALANCE_UPDATED', '{}', 1);
SELECT array_agg(e.tableoid::regclass::text LIKE 'es_events_0%' ORDER BY version) AS in_range
  FROM es_events e WHERE e.aggregate_id = 'PART-OVER';
SELECT count(*) AS read FROM es_get_events('PART-OVER');

-- The hint of an aggregate that moves on to a later range is updated in
-- place (aggregate.c): HOT, on the row's page, while that page of
-- es_aggregates has room, else on another page with new entries in every
-- index.  200 rows updated in one transaction (no pruning in between) fill
-- their pages: both kinds happen.
SELECT es_make_partitions(5000) >= 0 AS made;
SELECT count(*) AS created FROM (
    SELECT es_append('Account', 'PART-H' || g, 'ACCOUNT_OPENED', '{}', 0) FROM generate_series(1, 200) g) x;
SELECT count(*) AS moved_on FROM (
    SELECT es_append('Account', 'PART-FILL', 'ACCOUNT_BALANCE_UPDATED', '{}', NULL) FROM generate_series(1, 1000)) x;
CREATE TEMP TABLE part_h_pages AS
SELECT aggregate_id, (ctid::text::point)[0] AS page FROM es_aggregates WHERE aggregate_id LIKE 'PART-H%';
SELECT count(*) AS appended, bool_and(a.version = 2) AS second
  FROM generate_series(1, 200) g, es_append('Account', 'PART-H' || g, 'ACCOUNT_BALANCE_UPDATED', '{}', 1) a;
SELECT count(*) FILTER (WHERE b.page = (a.ctid::text::point)[0]) > 0 AS some_on_their_page,
       count(*) FILTER (WHERE b.page <> (a.ctid::text::point)[0]) > 0 AS some_on_another
  FROM es_aggregates a JOIN part_h_pages b USING (aggregate_id);
-- Every row version in every index of es_aggregates, and each row once.
CREATE EXTENSION amcheck;
SELECT count(*) AS indexes_checked
  FROM (SELECT bt_index_check(indexrelid, true) FROM pg_index WHERE indrelid = 'es_aggregates'::regclass) x;
DROP EXTENSION amcheck;
SELECT count(*) AS rows, count(DISTINCT a.aggregate_id) AS aggregates,
       bool_and(e.tableoid = (SELECT p.partition FROM es_partitions p
                               WHERE NOT p.is_default AND a.last_position >= p.from_position
                                 AND a.last_position < p.to_position)) AS hint_with_last_event
  FROM es_aggregates a
  JOIN es_events e ON e.aggregate_id = a.aggregate_id AND e.version = 2
 WHERE a.aggregate_id LIKE 'PART-H%';
-- One range further on, each hint leads to its aggregate's last event.
SELECT count(*) AS moved_on FROM (
    SELECT es_append('Account', 'PART-FILL', 'ACCOUNT_BALANCE_UPDATED', '{}', NULL) FROM generate_series(1, 1000)) x;
SELECT count(*) AS appended, bool_and(a.version = 3) AS third
  FROM generate_series(1, 200) g, es_append('Account', 'PART-H' || g, 'ACCOUNT_BALANCE_UPDATED', '{}', 2) a;

-- A new aggregate whose first batch crosses a range's end: its row's hint
-- (the last position taken when it was created) is in the range that
-- holds its first events, not its last.  Once the store has moved two
-- ranges on, its next append finds version 5, not 2 (each version once).
SELECT es_make_partitions(4000) >= 0 AS made;
SELECT (p.to_position - 3 - s.last_value + 1000) % 1000 AS pad
  FROM es_events_position_seq s
  JOIN es_partitions p ON NOT p.is_default AND s.last_value >= p.from_position AND s.last_value < p.to_position \gset
SELECT count(*) = :pad AS padded FROM (
    SELECT es_append('Account', 'PART-FILL', 'ACCOUNT_BALANCE_UPDATED', '{}', NULL) FROM generate_series(1, :pad)) x;
SELECT array_agg(version ORDER BY version) AS created
  FROM es_append_batch('Account', 'PART-SPAN', (SELECT jsonb_agg(jsonb_build_object('event_type', 'ACCOUNT_BALANCE_UPDATED', 'data', '{}'::jsonb))
                                                  FROM generate_series(1, 5)), 0);
SELECT count(DISTINCT tableoid) AS partitions FROM es_events WHERE aggregate_id = 'PART-SPAN';
SELECT count(*) AS moved_on FROM (
    SELECT es_append('Account', 'PART-FILL', 'ACCOUNT_BALANCE_UPDATED', '{}', NULL) FROM generate_series(1, 1500)) x;
SELECT version FROM es_append('Account', 'PART-SPAN', 'ACCOUNT_BALANCE_UPDATED', '{}', 5);
SELECT version FROM es_append('Account', 'PART-SPAN', 'ACCOUNT_BALANCE_UPDATED', '{}', NULL);
SELECT count(*) AS events, count(DISTINCT version) AS versions, max(version) AS last
  FROM es_events WHERE aggregate_id = 'PART-SPAN';

-- Indexes a DBA adds by hand on the columns the store scans (descending,
-- another collation, a hash) are passed over: the store's own serve the
-- scans, in their order (a descending one read the commit order backwards).
SELECT partition AS by_hand FROM es_partitions WHERE NOT is_default ORDER BY from_position LIMIT 1 \gset
SELECT md5(string_agg(position::text, ',')) AS before_indexes FROM es_read_all(max_count => 100000) \gset
SELECT md5(string_agg(position::text, ',')) AS stream_before FROM es_get_events('PART-SPAN') \gset
CREATE INDEX es_by_hand_commit ON :by_hand (tx_id DESC, position DESC);
CREATE UNIQUE INDEX es_by_hand_version ON :by_hand (aggregate_id DESC, version DESC);
CREATE UNIQUE INDEX es_by_hand_collation ON :by_hand (event_id COLLATE "POSIX");
CREATE INDEX es_by_hand_hash ON :by_hand USING hash (position);
SELECT md5(string_agg(position::text, ',')) = :'before_indexes' AS read_all_same FROM es_read_all(max_count => 100000);
SELECT md5(string_agg(position::text, ',')) = :'stream_before' AS stream_same FROM es_get_events('PART-SPAN');
DROP INDEX es_by_hand_commit, es_by_hand_version, es_by_hand_collation, es_by_hand_hash;

-- Bad input.
SELECT es_make_partitions(0);
SELECT es_make_partitions(-5);
