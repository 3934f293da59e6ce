-- Reads as of a recording time (as_of: what the store held then, by
-- recorded_at) beside reads at a business time (end_timestamp / at_time:
-- by occurred_at).  A back-dated event tells them apart: recorded now, it
-- occurred before everything else.
SELECT version FROM es_append('Account', 'ASOF-1', 'ACCOUNT_OPENED', '{"currency": "EUR", "balance": 0}', 0,
                              occurred_at => '2026-01-01 09:00+00');
SELECT version FROM es_append('Account', 'ASOF-1', 'ACCOUNT_BALANCE_UPDATED', '{"balance": 100}', 1,
                              occurred_at => '2026-01-02 09:00+00');
SELECT clock_timestamp() AS between_appends \gset
SELECT pg_sleep(0.01);
-- Back-dated: a correction recorded now of something that occurred on 1 January.
SELECT version FROM es_append('Account', 'ASOF-1', 'ACCOUNT_BALANCE_UPDATED', '{"balance": 90}', 2,
                              occurred_at => '2026-01-01 12:00+00');

-- Business time: the stream up to the first event that occurred later
-- (version 2 occurred on 2 January), so the correction is not reached.
SELECT version, data FROM es_get_events('ASOF-1', end_timestamp => '2026-01-01 18:00+00');
-- Recording time: what the store held between the appends.
SELECT version, data FROM es_get_events('ASOF-1', as_of => :'between_appends');
SELECT version, data FROM es_get_events('ASOF-1', as_of => now() + interval '1 hour');
SELECT version, data FROM es_get_events('ASOF-1', as_of => '2000-01-01');
SELECT state, version FROM es_load_aggregate('ASOF-1', as_of => :'between_appends');
SELECT state, version FROM es_load_aggregate('ASOF-1', at_time => '2026-01-01 18:00+00');
SELECT state, version FROM es_load_aggregate('ASOF-1');
-- Both: the shorter prefix.
SELECT version FROM es_get_events('ASOF-1', end_timestamp => '2026-01-03', as_of => :'between_appends');
-- Named and positional notation.
SELECT count(*) FROM es_get_events('ASOF-1', 1, NULL, NULL, :'between_appends');
SELECT version FROM es_load_aggregate('ASOF-1', NULL, NULL, :'between_appends');
