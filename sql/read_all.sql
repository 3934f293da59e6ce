-- es_read_all: the global stream in commit order, resumable from a (tx_id, position) checkpoint.
CREATE TABLE es_test.all_events AS SELECT * FROM es_read_all(max_count => 1000000);
SELECT count(*) = (SELECT count(*) FROM es_events) AS every_committed_event FROM es_test.all_events;
-- Ordered by (tx_id, position), and each aggregate's versions in order.
SELECT bool_and((tx_id, position) > (prev_tx, prev_pos)) AS commit_order
  FROM (SELECT tx_id, position, lag(tx_id) OVER w AS prev_tx, lag(position) OVER w AS prev_pos
          FROM es_read_all(max_count => 1000000) WINDOW w AS ()) s
 WHERE prev_tx IS NOT NULL;
SELECT count(*) AS out_of_version_order
  FROM (SELECT version, lag(version) OVER (PARTITION BY aggregate_id ORDER BY n) AS prev
          FROM (SELECT *, row_number() OVER () AS n FROM es_read_all(max_count => 1000000)) s) t
 WHERE version <> prev + 1;

-- Paging from checkpoints returns exactly the same events, once each.
CREATE TABLE es_test.paged (LIKE es_events);
DO $$
DECLARE
    ckpt_tx xid8 := '0';
    ckpt_pos bigint := 0;
    got int;
BEGIN
    LOOP
        INSERT INTO es_test.paged SELECT * FROM es_read_all(ckpt_tx, ckpt_pos, max_count => 97);
        GET DIAGNOSTICS got = ROW_COUNT;
        EXIT WHEN got = 0;
        SELECT tx_id, position INTO ckpt_tx, ckpt_pos FROM es_test.paged
         ORDER BY tx_id DESC, position DESC LIMIT 1;
    END LOOP;
END $$;
SELECT count(*) = (SELECT count(*) FROM es_test.all_events) AS same_count,
       count(DISTINCT event_id) = count(*) AS each_once
  FROM es_test.paged;
SELECT count(*) AS differences FROM
  ((SELECT event_id FROM es_test.paged EXCEPT SELECT event_id FROM es_test.all_events)
   UNION ALL
   (SELECT event_id FROM es_test.all_events EXCEPT SELECT event_id FROM es_test.paged)) d;

-- Filters: one aggregate type, some event types.
SELECT DISTINCT aggregate_type FROM es_read_all(aggregate_type => 'Loan', max_count => 1000000);
SELECT event_type, count(*) FROM es_read_all(event_types => ARRAY['LOAN_APPROVED', 'PAYMENT_INITIATED'],
                                             max_count => 1000000)
 GROUP BY 1 ORDER BY 1;
SELECT count(*) FROM es_read_all(aggregate_type => 'Loan', event_types => ARRAY['LOAN_REPAYMENT_MADE']);
SELECT count(*) FROM es_read_all(max_count => 5);

-- Events of a transaction still running are not read, not even by itself;
-- they appear once it commits.
SELECT tx_id AS last_tx, position AS last_pos FROM es_test.all_events
 ORDER BY tx_id DESC, position DESC LIMIT 1 \gset
BEGIN;
SELECT version FROM es_append('Account', 'ACC-RA', 'ACCOUNT_OPENED', '{}', 0);
SELECT count(*) AS visible_while_running FROM es_read_all(:'last_tx', :last_pos);
COMMIT;
SELECT aggregate_id, version FROM es_read_all(:'last_tx', :last_pos);

-- A filtered reader can checkpoint at the larger of the commit horizon taken
-- before its read and its last row, when the read returned less than
-- max_count: it skips what did not match.
SELECT es_commit_horizon() AS horizon \gset
SELECT count(*) FROM es_read_all(:'last_tx', :last_pos, aggregate_type => 'Loan');
SELECT version FROM es_append('Loan', 'LOAN-RA', 'LOAN_APPLICATION_SUBMITTED', '{}', 0);
SELECT aggregate_id FROM es_read_all(:'horizon', 0, aggregate_type => 'Loan');
SELECT :'horizon'::xid8 > :'last_tx'::xid8 AS horizon_beyond_checkpoint,
       es_commit_horizon() > :'horizon'::xid8 AS horizon_moves;

-- Argument errors.
SELECT es_test.error_of($$SELECT * FROM es_read_all(max_count => 0)$$);
SELECT es_test.error_of($$SELECT * FROM es_read_all('0', -1)$$);
SELECT es_test.error_of($$SELECT * FROM es_read_all(aggregate_type => 'not a type')$$);

-- Drivers: an integer literal has no cast to xid8, so the checkpoint's tx_id
-- is taken as bigint and as text too, the same reader behind each.
SELECT (SELECT array_agg(position) FROM es_read_all(after_tx_id => 0, max_count => 50))
     = (SELECT array_agg(position) FROM es_read_all(max_count => 50)) AS bigint_same,
       (SELECT array_agg(position) FROM es_read_all(:'last_tx'::text, :last_pos))
     = (SELECT array_agg(position) FROM es_read_all(:'last_tx'::xid8, :last_pos)) AS text_same,
       (SELECT array_agg(position) FROM es_read_all(:'last_tx'::text::bigint, :last_pos))
     = (SELECT array_agg(position) FROM es_read_all(:'last_tx'::xid8, :last_pos)) AS bigint_checkpoint_same;
SELECT es_test.error_of($$SELECT * FROM es_read_all(-1)$$);
SELECT es_test.error_of($$SELECT * FROM es_read_all('12abc'::text)$$);
SELECT count(*) FROM es_read_all(NULL::bigint, max_count => 3);

-- Results live in memory that outlives the query (read.c): reused by a
-- rescan of each call, by a cursor read while other calls run, and after a
-- query that failed while reading them.
SELECT count(*) AS rows_of_rescans
  FROM generate_series(1, 4) g, LATERAL es_read_all(max_count => g) r;
SELECT es_test.error_of($$SELECT count(*) FROM es_read_all(max_count => 100) r
                           WHERE 1 / (r.version - r.version) = 1$$);
DO $$
DECLARE
    c refcursor;
    p bigint;
    got bigint[] := '{}';
BEGIN
    OPEN c FOR SELECT position FROM es_read_all(max_count => 5);
    FETCH c INTO p; got := got || p;
    FETCH c INTO p; got := got || p;
    PERFORM count(*) FROM es_read_all(max_count => 100);
    LOOP
        FETCH c INTO p;
        EXIT WHEN NOT FOUND;
        got := got || p;
    END LOOP;
    IF got IS DISTINCT FROM (SELECT array_agg(position) FROM es_read_all(max_count => 5)) THEN
        RAISE EXCEPTION 'the cursor''s rows changed under another call: %', got;
    END IF;
END $$;

-- es_read_log: the commit log grows only with wal_level = logical (test/t/019_commit_log.pl);
-- this server runs with replica: the log is empty, and es_health says why.
SELECT count(*) AS logged FROM es_read_log();
SELECT status, detail FROM es_health() WHERE component = 'commit log';
SELECT count(*) FROM es_read_log(NULL, NULL, NULL);
SELECT es_test.error_of($$SELECT * FROM es_read_log(-1)$$);
SELECT es_test.error_of($$SELECT * FROM es_read_log(0, -5)$$);
SELECT es_test.error_of($$SELECT * FROM es_read_log(0, 0, 0)$$);
-- Where a reader of es_read_all goes on in the log: past its last row (none
-- here), or from the start without a checkpoint.
SELECT es_read_log_start(es_commit_horizon()) AS log_start, es_read_log_start(NULL) AS without_checkpoint;
