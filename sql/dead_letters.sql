-- Retries with exponential backoff, dead letters, parking, retrying dead letters.
CREATE SEQUENCE es_test.calls;
CREATE TABLE es_test.applied (event_id text, aggregate_id text, version bigint, call bigint, at timestamptz);
-- Fails while data.fail_until is above the number of calls so far; data.poison always fails.
CREATE FUNCTION es_test.flaky(event es_events) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    n bigint := nextval('es_test.calls');
BEGIN
    IF (event.data->>'fail_until')::int > n THEN
        RAISE EXCEPTION 'transient failure (call %)', n;
    END IF;
    IF event.data ? 'poison' THEN
        RAISE EXCEPTION 'cannot handle this event' USING ERRCODE = 'data_exception';
    END IF;
    INSERT INTO es_test.applied VALUES (event.event_id, event.aggregate_id, event.version, n, clock_timestamp());
END $$;
SELECT es_register_handler('flaky', 'es_test.flaky(es_events)', max_retries => 3, backoff => '200 ms');

-- Fails twice, then succeeds: applied once, after 200 ms + 400 ms of backoff.
SELECT clock_timestamp() AS appended_at \gset
SELECT version FROM es_append('Loan', 'DL-L1', 'LOAN_APPLICATION_SUBMITTED', '{"fail_until": 3}', 0);
SELECT version FROM es_append('Loan', 'DL-L1', 'LOAN_APPROVED', '{}', 1);
SELECT es_test.wait_until($$SELECT count(*) = 2 FROM es_test.applied$$) AS delivered;
SELECT aggregate_id, version, call, at - :'appended_at'::timestamptz >= interval '600 ms' AS after_backoff
  FROM es_test.applied ORDER BY call;
SELECT count(*) AS dead_letters FROM es_dead_letters WHERE consumer = 'flaky';

-- Always fails: dead-lettered after 1 + 3 attempts; the later events of its
-- aggregate are parked behind it; other aggregates go on.
SELECT version FROM es_append('Loan', 'DL-L2', 'LOAN_APPLICATION_SUBMITTED', '{"poison": true}', 0);
SELECT version FROM es_append('Loan', 'DL-L2', 'LOAN_APPROVED', '{}', 1);
SELECT version FROM es_append('Loan', 'DL-L3', 'LOAN_APPLICATION_SUBMITTED', '{}', 0);
SELECT version FROM es_append('Loan', 'DL-L2', 'LOAN_DISBURSED', '{}', 2);
SELECT es_test.wait_until($$SELECT count(*) = 3 FROM es_dead_letters WHERE consumer = 'flaky'$$) AS dead_lettered;
SELECT es_test.wait_until($$SELECT count(*) = 1 FROM es_test.applied WHERE aggregate_id = 'DL-L3'$$) AS others_go_on;
SELECT handler, status, parked_behind IS NOT NULL AS parked, attempts, error, aggregate_id, version
  FROM es_dead_letter_queue ORDER BY position;
SELECT handler, state, dead_letters, parked, last_error FROM es_handler_status WHERE handler = 'flaky';
SELECT count(*) AS l2_applied FROM es_test.applied WHERE aggregate_id = 'DL-L2';
SELECT consumer, dead_letters FROM es_stats WHERE consumer = 'flaky';

-- Retrying: a parked letter, a resolved one or a missing one cannot be.
SELECT id AS dead_id FROM es_dead_letters WHERE status = 'dead' \gset
SELECT id AS parked_id FROM es_dead_letters WHERE status = 'parked' ORDER BY position LIMIT 1 \gset
SELECT es_test.error_of(format('SELECT es_retry_dead_letter(%s)', :parked_id)) LIKE '55000: dead letter % is parked behind dead letter %' AS parked_refused;
SELECT es_test.error_of('SELECT es_retry_dead_letter(-1)');
-- Still failing: it stays dead, the others stay parked.
SELECT es_retry_dead_letter(:dead_id);
SELECT es_test.wait_until(format($$SELECT attempts = 5 FROM es_dead_letters WHERE id = %s$$, :dead_id)) AS retried_once;
SELECT status, count(*) FROM es_dead_letters WHERE consumer = 'flaky' GROUP BY 1 ORDER BY 1;
-- Fixed: the dead letter, then the parked events, in order; new events of the
-- aggregate after them.
CREATE OR REPLACE FUNCTION es_test.flaky(event es_events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO es_test.applied VALUES (event.event_id, event.aggregate_id, event.version,
                                        nextval('es_test.calls'), clock_timestamp());
END $$;
SELECT es_retry_dead_letters('flaky');
SELECT version FROM es_append('Loan', 'DL-L2', 'LOAN_REPAYMENT_MADE', '{}', 3);
SELECT es_test.wait_until($$SELECT count(*) = 4 FROM es_test.applied WHERE aggregate_id = 'DL-L2'$$) AS all_applied;
SELECT version FROM es_test.applied WHERE aggregate_id = 'DL-L2' ORDER BY call;
SELECT status, count(*) FROM es_dead_letters WHERE consumer = 'flaky' GROUP BY 1 ORDER BY 1;
SELECT count(*) AS open FROM es_dead_letter_queue;
SELECT es_test.error_of(format('SELECT es_retry_dead_letter(%s)', :dead_id)) = format('55000: dead letter %s is resolved already', :dead_id) AS resolved_refused;
SELECT es_retry_dead_letters('flaky');
SELECT es_unregister_handler('flaky');

-- Errors a handler passes on that look like the worker's own: a 57014 (a
-- remote server's statement timeout, through postgres_fdw or dblink) and
-- running out of memory are the handler's failures, retried and then
-- dead-lettered, like any other; the batch does not abort at every pass.
CREATE FUNCTION es_test.passes_on(event es_events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF event.data ? 'remote_timeout' THEN
        RAISE EXCEPTION 'canceling statement due to statement timeout' USING ERRCODE = 'query_canceled';
    END IF;
    IF event.data ? 'out_of_memory' THEN
        RAISE EXCEPTION 'out of memory' USING ERRCODE = 'out_of_memory';
    END IF;
    INSERT INTO es_test.applied VALUES (event.event_id, event.aggregate_id, event.version,
                                        nextval('es_test.calls'), clock_timestamp());
END $$;
SELECT es_register_handler('passes_on', 'es_test.passes_on(es_events)', max_retries => 1, backoff => '10 ms');
SELECT version FROM es_append('Loan', 'DL-P1', 'LOAN_APPLICATION_SUBMITTED', '{"remote_timeout": true}', 0);
SELECT version FROM es_append('Loan', 'DL-P2', 'LOAN_APPLICATION_SUBMITTED', '{"out_of_memory": true}', 0);
SELECT version FROM es_append('Loan', 'DL-P3', 'LOAN_APPLICATION_SUBMITTED', '{}', 0);
SELECT es_test.wait_until($$SELECT count(*) = 2 FROM es_dead_letters WHERE consumer = 'passes_on'$$) AS dead_lettered;
SELECT es_test.wait_until($$SELECT count(*) = 1 FROM es_test.applied WHERE aggregate_id = 'DL-P3'$$) AS others_go_on;
SELECT aggregate_id, status, attempts, error FROM es_dead_letter_queue WHERE handler = 'passes_on' ORDER BY position;
SELECT es_unregister_handler('passes_on');

-- The wait doubles up to a day, however many retries: a handler past 44
-- failures of a one-second backoff (its attempts set so by hand) waits a
-- day, where 2^44 seconds overflowed the retry's time.
CREATE FUNCTION es_test.always_fails(event es_events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'down for maintenance';
END $$;
SELECT es_register_handler('always_fails', 'es_test.always_fails(es_events)', max_retries => 100, backoff => '1 s');
SELECT version FROM es_append('Loan', 'DL-F1', 'LOAN_APPLICATION_SUBMITTED', '{}', 0);
SELECT es_test.wait_until($$SELECT retry_attempts = 1 FROM es_consumers WHERE name = 'always_fails'$$) AS failed_once;
UPDATE es_consumers SET retry_attempts = 44, retry_at = now() WHERE name = 'always_fails';
SELECT es_test.wait_until($$SELECT retry_attempts = 45 FROM es_consumers WHERE name = 'always_fails'$$) AS failed_again;
SELECT retry_at - last_error_at BETWEEN interval '1 day' - interval '1 minute' AND interval '1 day' + interval '1 minute' AS waits_a_day
  FROM es_consumers WHERE name = 'always_fails';
SELECT es_unregister_handler('always_fails');

-- An operator's cancel of the worker is not the handler's failure: with no
-- retry allowed, the event is still applied once, at the next pass, and
-- not dead-lettered.
CREATE SEQUENCE es_test.cancel_calls;
CREATE FUNCTION es_test.cancelled(event es_events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF nextval('es_test.cancel_calls') = 1 THEN
        PERFORM pg_sleep(60);
    END IF;
    INSERT INTO es_test.applied VALUES (event.event_id, event.aggregate_id, event.version,
                                        nextval('es_test.calls'), clock_timestamp());
END $$;
SELECT es_register_handler('cancelled', 'es_test.cancelled(es_events)', max_retries => 0);
SELECT version FROM es_append('Loan', 'DL-C1', 'LOAN_APPLICATION_SUBMITTED', '{}', 0);
SELECT es_test.wait_until($$SELECT count(*) = 1 FROM pg_stat_activity
                             WHERE backend_type = 'ultracore_es delivery' AND wait_event = 'PgSleep'$$) AS handler_sleeping;
SELECT count(pg_cancel_backend(pid)) AS cancelled FROM pg_stat_activity
 WHERE backend_type = 'ultracore_es delivery' AND wait_event = 'PgSleep';
SELECT es_test.wait_until($$SELECT count(*) = 1 FROM es_test.applied WHERE aggregate_id = 'DL-C1'$$) AS applied_after_cancel;
SELECT count(*) AS dead_letters FROM es_dead_letters WHERE consumer = 'cancelled';
SELECT es_unregister_handler('cancelled');
