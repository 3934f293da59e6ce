-- Projections of your own: a function(event es_events), inline or async,
-- with a reset function for rebuilds.  Then each function's errors.
CREATE TABLE es_test.deposits (account_id text PRIMARY KEY, total numeric NOT NULL, events int NOT NULL);
CREATE FUNCTION es_test.project_deposit(event es_events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO es_test.deposits VALUES (event.aggregate_id, (event.data->>'amount')::numeric, 1)
    ON CONFLICT (account_id) DO UPDATE
       SET total = deposits.total + excluded.total, events = deposits.events + 1
$$;
CREATE FUNCTION es_test.reset_deposits(aggregate_id text) RETURNS void LANGUAGE sql AS $$
    DELETE FROM es_test.deposits WHERE $1 IS NULL OR account_id = $1
$$;
SELECT es_register_event_type('PJ_DEPOSIT_MADE', 'Account', 'a deposit, for the projections test');
-- Events before the registration are projected too: a projection starts at the first event.
SELECT version FROM es_append('Account', 'PJ-1', 'PJ_DEPOSIT_MADE', '{"amount": "1.50"}', NULL);
SELECT es_register_projection('deposits', 'es_test.project_deposit(es_events)',
                              event_types => ARRAY['PJ_DEPOSIT_MADE'], mode => 'inline',
                              reset_function => 'es_test.reset_deposits(text)');
SELECT * FROM es_test.deposits WHERE account_id LIKE 'PJ-%';
-- Inline: in the append's transaction.
SELECT count(*) FROM es_append_batch('Account', 'PJ-1',
    '[{"event_type": "PJ_DEPOSIT_MADE", "data": {"amount": "0.25"}},
      {"event_type": "PJ_DEPOSIT_MADE", "data": {"amount": "0.25"}}]');
SELECT * FROM es_test.deposits WHERE account_id LIKE 'PJ-%';
BEGIN;
SELECT version FROM es_append('Account', 'PJ-1', 'PJ_DEPOSIT_MADE', '{"amount": "100"}');
SELECT total FROM es_test.deposits WHERE account_id = 'PJ-1';
ROLLBACK;
SELECT total FROM es_test.deposits WHERE account_id = 'PJ-1';
-- Its failure refuses the append.
SELECT es_test.error_of($$SELECT es_append('Account', 'PJ-1', 'PJ_DEPOSIT_MADE', '{"amount": "lots"}')$$);
SELECT es_aggregate_version('PJ-1') AS version;

-- Registering again with the same definition changes nothing; with another
-- mode, it is rebuilt in that mode (it has a reset function).
SELECT es_register_projection('deposits', 'es_test.project_deposit(es_events)',
                              event_types => ARRAY['PJ_DEPOSIT_MADE'], mode => 'inline', max_retries => 1);
SELECT name, mode, events_processed, state FROM es_projection_status WHERE name = 'deposits';
SELECT es_register_projection('deposits', 'es_test.project_deposit(es_events)',
                              event_types => ARRAY['PJ_DEPOSIT_MADE'], mode => 'async');
SELECT position AS last_position FROM es_append('Account', 'PJ-2', 'PJ_DEPOSIT_MADE', '{"amount": 7}', 0) \gset
SELECT es_wait_for_projection('deposits', :last_position, '30 seconds') AS caught_up;
SELECT * FROM es_test.deposits WHERE account_id LIKE 'PJ-%' ORDER BY 1;
SELECT name, mode, state, lag_events, dead_letters FROM es_projection_status WHERE name = 'deposits';
-- Read-your-writes on an inline projection: as soon as the event is committed.
SELECT es_register_projection('deposits', 'es_test.project_deposit(es_events)',
                              event_types => ARRAY['PJ_DEPOSIT_MADE'], mode => 'inline');
SELECT es_wait_for_projection('deposits', :last_position, '0 s') AS immediate;
SELECT * FROM es_test.deposits WHERE account_id LIKE 'PJ-%' ORDER BY 1;
-- Rebuilt, one aggregate or all.
UPDATE es_test.deposits SET total = 0;
SELECT es_rebuild_projection('deposits', 'PJ-1');
SELECT * FROM es_test.deposits WHERE account_id LIKE 'PJ-%' ORDER BY 1;
SELECT es_rebuild_projection('deposits') > 0 AS rebuilt;
SELECT * FROM es_test.deposits WHERE account_id LIKE 'PJ-%' ORDER BY 1;

-- An async projection that fails is retried, then dead-lettered like a handler.
CREATE FUNCTION es_test.project_picky(event es_events) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF event.data ? 'poison' THEN
        RAISE EXCEPTION 'cannot project this';
    END IF;
END $$;
SELECT es_register_projection('picky', 'es_test.project_picky(es_events)', ARRAY['ACCOUNT_FROZEN'],
                              max_retries => 0);
SELECT version FROM es_append('Account', 'PJ-2', 'ACCOUNT_FROZEN', '{"poison": 1}', 1);
SELECT es_test.wait_until($$SELECT dead_letters = 1 FROM es_projection_status WHERE name = 'picky'$$) AS dead_lettered;
SELECT handler, status, error, aggregate_id FROM es_dead_letter_queue WHERE handler = 'picky';
SELECT es_unregister_projection('picky');

-- Errors.
CREATE FUNCTION es_test.not_a_projection(x int) RETURNS void LANGUAGE sql AS 'SELECT';
CREATE FUNCTION es_test.strict_reset(aggregate_id text) RETURNS void LANGUAGE sql STRICT AS 'SELECT';
SELECT es_test.error_of($$SELECT es_register_projection('p', 'es_test.project_deposit(es_events)', mode => 'sometimes')$$);
SELECT es_test.error_of($$SELECT es_register_projection('p')$$);
SELECT es_test.error_of($$SELECT es_register_projection('p', 'es_test.not_a_projection(int)')$$);
SELECT es_test.error_of($$SELECT es_register_projection('p', 'es_test.project_deposit(es_events)', reset_function => 'es_test.strict_reset(text)')$$);
SELECT es_test.error_of($$SELECT es_register_projection('p', 'es_test.project_deposit(es_events)', event_types => ARRAY['NOPE'])$$);
SELECT es_test.error_of($$SELECT es_register_projection('p', 'es_test.project_deposit(es_events)', max_retries => -1)$$);
SELECT es_test.error_of($$SELECT es_register_projection('p', 'es_test.project_deposit(es_events)', backoff => '25 hours')$$);
SELECT es_test.error_of($$SELECT es_register_projection('bad name', 'es_test.project_deposit(es_events)')$$);
SELECT es_test.error_of($$SELECT es_register_projection(NULL, 'es_test.project_deposit(es_events)')$$);
-- Handlers and projections do not share names.
CREATE FUNCTION es_test.ignore(event es_events) RETURNS void LANGUAGE sql AS 'SELECT';
SELECT es_register_handler('a_handler', 'es_test.ignore(es_events)');
SELECT es_test.error_of($$SELECT es_register_projection('a_handler', 'es_test.ignore(es_events)')$$);
SELECT es_test.error_of($$SELECT es_register_handler('deposits', 'es_test.ignore(es_events)')$$);
SELECT es_unregister_handler('a_handler');
-- Without a reset function, a projection cannot be rebuilt or redefined.
SELECT es_register_projection('no_reset', 'es_test.ignore(es_events)', ARRAY['ACCOUNT_FROZEN']);
SELECT es_test.error_of($$SELECT es_rebuild_projection('no_reset')$$);
SELECT es_test.error_of($$SELECT es_register_projection('no_reset', 'es_test.ignore(es_events)', ARRAY['ACCOUNT_CLOSED'])$$);
SELECT es_unregister_projection('no_reset');
SELECT es_test.error_of($$SELECT es_unregister_projection('nope')$$);
SELECT es_test.error_of($$SELECT es_rebuild_projection('nope')$$);
SELECT es_test.error_of($$SELECT es_rebuild_projection('deposits', '')$$);
SELECT es_test.error_of($$SELECT es_wait_for_projection('nope', 1)$$);
SELECT es_test.error_of($$SELECT es_wait_for_projection('deposits', NULL)$$);
SELECT es_test.error_of($$SELECT es_wait_for_projection('deposits', 0)$$);
SELECT es_test.error_of($$SELECT es_wait_for_projection('deposits', 1, '-1 s')$$);
SELECT es_test.error_of($$SELECT es_wait_for_projection('deposits', 1, NULL)$$);
-- A rebuild needs READ COMMITTED.
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT es_test.error_of($$SELECT es_rebuild_projection('deposits')$$);
ROLLBACK;
-- Waiting for an async projection: not for the current transaction's own
-- event; false at the timeout for a position not (yet) committed.
SELECT es_register_projection('deposits', 'es_test.project_deposit(es_events)',
                              event_types => ARRAY['PJ_DEPOSIT_MADE'], mode => 'async');
BEGIN;
SELECT position AS own_position FROM es_append('Account', 'PJ-3', 'PJ_DEPOSIT_MADE', '{"amount": 1}', 0) \gset
SELECT es_test.error_of(format('SELECT es_wait_for_projection(%L, %s)', 'deposits', :own_position))
       = format('55000: the event at position %s belongs to the current transaction | Projection "deposits" is async: it applies the event after the transaction commits.', :own_position) AS refused;
ROLLBACK;
SELECT es_wait_for_projection('deposits', 9223372036854775807, '50 ms') AS future;

SELECT es_unregister_projection('deposits');
SELECT count(*) FROM es_consumers WHERE name = 'deposits';
SELECT count(*) AS rows_kept FROM es_test.deposits;

-- A built-in read model, async: the worker folds a run of events of one
-- aggregate into its row in one go, and its failure is the event that failed:
-- the events before it folded, it dead-lettered, the later ones parked.
SELECT es_unregister_projection('es_accounts');
BEGIN;
SELECT count(*) FROM es_append_batch('Account', 'RMA-1',
    '[{"event_type": "ACCOUNT_OPENED", "data": {"currency": "EUR", "balance": "10.00"}},
      {"event_type": "ACCOUNT_BALANCE_UPDATED", "data": {"amount": "1.25"}},
      {"event_type": "ACCOUNT_BALANCE_UPDATED", "data": {"amount": "1.25"}},
      {"event_type": "ACCOUNT_BALANCE_UPDATED", "data": {"amount": "-0.50"}}]', 0);
SELECT count(*) FROM es_append_batch('Account', 'RMA-2',
    '[{"event_type": "ACCOUNT_OPENED", "data": {"currency": "EUR"}},
      {"event_type": "ACCOUNT_BALANCE_UPDATED", "data": {"amount": "2.00"}},
      {"event_type": "ACCOUNT_BALANCE_UPDATED", "data": {"amount": "lots"}},
      {"event_type": "ACCOUNT_BALANCE_UPDATED", "data": {"amount": "5.00"}}]', 0);
SELECT count(*) FROM es_append_batch('Account', 'RMA-3',
    '[{"event_type": "ACCOUNT_OPENED", "data": {"currency": "USD", "balance": 7}}]', 0);
COMMIT;
SELECT max(position) AS last_position FROM es_events \gset
SELECT es_register_projection('es_accounts', max_retries => 0);
SELECT es_wait_for_projection('es_accounts', :last_position, '30 seconds') AS caught_up;
SELECT account_id, currency, balance, version FROM es_accounts WHERE account_id LIKE 'RMA-%' ORDER BY 1;
SELECT status, aggregate_id, version, error FROM es_dead_letter_queue WHERE handler = 'es_accounts' ORDER BY version;
-- The rows' versions are the model's ledger: no idempotency record per event.
SELECT count(*) AS ledger_records FROM es_handled WHERE consumer = 'es_accounts';
-- Every other row holds its aggregate's last event of the model's types.
SELECT count(*) AS rows_behind
  FROM es_accounts a
 WHERE a.account_id <> 'RMA-2'
   AND a.version <> (SELECT max(e.version) FROM es_events e, es_projections p
                      WHERE p.name = 'es_accounts' AND e.aggregate_id = a.account_id
                        AND e.event_type = ANY (p.event_types));

-- The read models of read_models.sql are switched off; their rows stay.
SELECT name, es_unregister_projection(name) FROM es_projection_status ORDER BY name;
SELECT count(*) > 0 AS rows_kept FROM es_accounts;
