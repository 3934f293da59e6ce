-- Personal data, crypto-shredded: registered fields are sealed on append
-- with their subject's key, every read path reveals them, es_forget makes
-- them JSON null everywhere while the history stays intact.  (The data
-- directory and the WAL are searched for the plaintext in TAP test 016.)

-- Without a master key, nothing personal can be registered.
SELECT es_test.error_of($$SELECT es_register_personal_data('CUSTOMER_CREATED', ARRAY['name'])$$);

-- A master key file, readable by the server's user only, in the data
-- directory of pg_regress's instance (a relative path is relative to it).
\! umask 077 && head -c 32 /dev/urandom > tmp_check/data/es_master.key
ALTER SYSTEM SET ultracore_es.master_key_file = 'es_master.key';
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
\c
SELECT current_setting('ultracore_es.master_key_file') <> '' AS master_key_set;

SELECT es_register_personal_data('CUSTOMER_CREATED', ARRAY['name', 'email', 'address']);
SELECT es_register_personal_data('CUSTOMER_UPDATED', ARRAY['name', 'email', 'phone']);
SELECT es_register_event_type('PD_NOTE_ADDED', 'Note', 'A note about a customer');
SELECT es_register_personal_data('PD_NOTE_ADDED', ARRAY['text'], subject_field => 'customer_id');
SELECT event_type, fields, subject_field FROM es_personal_data ORDER BY 1;

SELECT es_register_projection('es_customers', mode => 'inline');
CREATE TABLE es_test.pd_handled (event_id text, data jsonb);
CREATE FUNCTION es_test.pd_handler(event es_events) RETURNS void LANGUAGE sql
    AS $$ INSERT INTO es_test.pd_handled VALUES ($1.event_id, $1.data) $$;
SELECT es_register_handler('pd_handler', 'es_test.pd_handler(es_events)', event_types => ARRAY['CUSTOMER_CREATED']);
SELECT es_set_snapshot_policy('Customer', 2);

SELECT version FROM es_append('Customer', 'PD-1', 'CUSTOMER_CREATED',
    '{"name": "Ada Quill", "email": "ada@example.org", "address": {"city": "Sydney"}, "segment": "retail"}', 0,
    event_id => 'pd-1-created');
SELECT version FROM es_append('Customer', 'PD-1', 'CUSTOMER_UPDATED', '{"phone": "+61 2 5550 1234"}', 1);
SELECT version FROM es_append('Customer', 'PD-2', 'CUSTOMER_CREATED', '{"name": "Bo Lind", "email": "bo@example.org"}', 0);
SELECT version FROM es_append('Note', 'NOTE-1', 'PD_NOTE_ADDED', '{"customer_id": "PD-1", "text": "prefers mornings"}', 0);

-- Stored: envelopes naming the subject, and metadata saying which fields.
SELECT aggregate_id, version, data::text ~ '(Ada|Quill|ada@|Sydney|5550|Lind|mornings)' AS plaintext_stored,
       data ->> 'name' LIKE 'es1:%' AS name_sealed, data ->> 'segment' AS segment,
       metadata -> 'personal_data' AS personal_data, es_verify_ok
  FROM es_events, LATERAL (SELECT count(*) = 0 AS es_verify_ok FROM es_verify(aggregate_id)) v
 WHERE aggregate_id IN ('PD-1', 'PD-2', 'NOTE-1') ORDER BY position;

-- Every read path reveals them.
SELECT version, data FROM es_get_events('PD-1') ORDER BY version;
SELECT aggregate_id, data FROM es_read_all(after_tx_id => 0, max_count => 100000)
 WHERE aggregate_id IN ('PD-2', 'NOTE-1') ORDER BY position;
SELECT data FROM es_causation_chain('pd-1-created');
SELECT state, version, snapshot_version FROM es_load_aggregate('PD-1');
SELECT name, email, phone, address, status FROM es_customers WHERE customer_id IN ('PD-1', 'PD-2') ORDER BY 1;
SELECT es_test.wait_until($$SELECT count(*) = 2 FROM es_test.pd_handled$$);
SELECT data FROM es_test.pd_handled ORDER BY event_id;
-- The read model and the snapshot hold them sealed.
SELECT name LIKE 'es1:%' AS name_sealed, address #>> '{}' LIKE 'es1:%' AS address_sealed
  FROM es_rm_customers WHERE customer_id = 'PD-1';
SELECT version, subjects, state::text ~ '(Ada|Quill|Sydney)' AS plaintext_stored
  FROM es_snapshots WHERE aggregate_id = 'PD-1';
SELECT state FROM es_get_snapshot('PD-1');
-- The notification outbox gets the data without them.
SELECT es_notification_handler(e) FROM es_get_events('PD-2') e;
SELECT payload -> 'data' FROM es_notification_outbox WHERE aggregate_id = 'PD-2';

-- A retry with the same content is the same event; other content is not.
SELECT version FROM es_append('Customer', 'PD-1', 'CUSTOMER_CREATED',
    '{"name": "Ada Quill", "email": "ada@example.org", "address": {"city": "Sydney"}, "segment": "retail"}', 0,
    event_id => 'pd-1-created');
SELECT es_test.error_of($$SELECT es_append('Customer', 'PD-1', 'CUSTOMER_CREATED',
    '{"name": "Ada Quil", "email": "ada@example.org", "address": {"city": "Sydney"}, "segment": "retail"}', 0,
    event_id => 'pd-1-created')$$);

-- Forgetting PD-1: its fields read as null everywhere, the rest stays.
SELECT es_forget('PD-1');
SELECT es_forget('PD-1') AS again;
SELECT forgotten_at IS NOT NULL AS forgotten, wrapped_key IS NULL AS key_gone FROM es_subject_keys WHERE subject_id = 'PD-1';
SELECT version, data FROM es_get_events('PD-1') ORDER BY version;
SELECT data FROM es_get_events('NOTE-1');
SELECT aggregate_id, data FROM es_read_all(after_tx_id => 0, max_count => 100000)
 WHERE aggregate_id IN ('PD-1', 'PD-2') ORDER BY position;
SELECT state, version, snapshot_version FROM es_load_aggregate('PD-1');
SELECT state FROM es_get_snapshot('PD-1');
SELECT customer_id, name, email, phone, address FROM es_customers WHERE customer_id IN ('PD-1', 'PD-2') ORDER BY 1;
SELECT es_rebuild_projection('es_customers', 'PD-1');
SELECT customer_id, name, email, phone, address FROM es_customers WHERE customer_id = 'PD-1';
-- Events stay as they were stored: the history verifies.
SELECT * FROM es_verify('PD-1');
SELECT * FROM es_verify('NOTE-1');
-- A numeric subject id is one subject whatever its scale: es_forget('42')
-- reaches data written with 42.0 and with 42.
SELECT version FROM es_append('Note', 'NOTE-2', 'PD_NOTE_ADDED', '{"customer_id": 42.0, "text": "scaled"}', 0);
SELECT version FROM es_append('Note', 'NOTE-3', 'PD_NOTE_ADDED', '{"customer_id": 42, "text": "plain"}', 0);
SELECT es_forget('42');
SELECT aggregate_id, data ->> 'text' LIKE 'es1:%' AS sealed, metadata -> 'personal_data' AS personal_data
  FROM es_events WHERE aggregate_id IN ('NOTE-2', 'NOTE-3') ORDER BY 1;
SELECT aggregate_id, data FROM es_read_all(after_tx_id => 0, max_count => 100000)
 WHERE aggregate_id IN ('NOTE-2', 'NOTE-3') ORDER BY position;
-- A state given to es_save_snapshot that is not the fold: the fold is not
-- shown when it holds personal data (an error stays in the server log).
SELECT es_test.error_of($$SELECT es_save_snapshot('PD-2', 1, '{"x": 1}')$$);
SELECT version FROM es_append('Account', 'PD-ACC', 'ACCOUNT_OPENED', '{"balance": 1}', 0);
SELECT es_test.error_of($$SELECT es_save_snapshot('PD-ACC', 1, '{"x": 1}')$$) ~ 'fold to \{' AS shown_without_personal_data;
-- No new personal data of a forgotten subject; other fields still go.
SELECT es_test.error_of($$SELECT es_append('Customer', 'PD-1', 'CUSTOMER_UPDATED', '{"email": "new@example.org"}', 2)$$);
SELECT version FROM es_append('Customer', 'PD-1', 'CUSTOMER_UPDATED', '{"segment": "private"}', 2);

-- The notification outbox leaves personal fields out by value: a field an
-- upcaster renamed and moved since it was sealed (email to contact.email)
-- is left out too, and no plaintext reaches the outbox.
SELECT es_register_event_type('PD_CONTACT_ADDED', 'Contact', 'A contact of a customer');
SELECT es_register_personal_data('PD_CONTACT_ADDED', ARRAY['email']);
BEGIN;
SELECT es_register_handler('es_notification_outbox', 'es_notification_handler(es_events)',
                           event_types => ARRAY['PD_CONTACT_ADDED']);
SELECT es_resume_handler('es_notification_outbox');
SELECT version FROM es_append('Contact', 'PD-C1', 'PD_CONTACT_ADDED', '{"email": "cy@example.org", "kind": "work"}', 0);
CREATE FUNCTION es_test.contact_v1_to_v2(data jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE STRICT
    AS $$ SELECT (data - 'email') || jsonb_build_object('contact', jsonb_build_object('email', data -> 'email')) $$;
SELECT es_register_upcaster('PD_CONTACT_ADDED', 1, 'es_test.contact_v1_to_v2(jsonb)');
COMMIT;
SELECT es_test.wait_until($$SELECT count(*) = 1 FROM es_notification_outbox WHERE aggregate_id = 'PD-C1'$$) AS notified;
SELECT payload -> 'data' AS data, payload::text ~ 'cy@' AS plaintext
  FROM es_notification_outbox WHERE aggregate_id = 'PD-C1';
SELECT data FROM es_get_events('PD-C1');
SELECT es_pause_handler('es_notification_outbox');
SELECT es_without_personal_data('{"a": "es1:x:y", "b": [1, "es1:x:y", {"c": "es1:q:r", "d": 2}], "e": "plain", "f": {}}'),
       es_without_personal_data('"es1:x:y"'), es_without_personal_data('[]'), es_without_personal_data('"es1"');

-- What is refused.
SELECT es_test.error_of($$SELECT es_register_personal_data('NO_SUCH_TYPE', ARRAY['x'])$$);
SELECT es_test.error_of($$SELECT es_register_personal_data('CUSTOMER_CREATED', ARRAY[]::text[])$$);
SELECT es_test.error_of($$SELECT es_register_personal_data('CUSTOMER_CREATED', ARRAY['name', NULL])$$);
SELECT es_test.error_of($$SELECT es_register_personal_data('CUSTOMER_CREATED', NULL)$$);
SELECT es_test.error_of($$SELECT es_register_personal_data('PD_NOTE_ADDED', ARRAY['text', 'customer_id'], 'customer_id')$$);
SELECT es_test.error_of($$SELECT es_append('Note', 'NOTE-2', 'PD_NOTE_ADDED', '{"text": "no subject"}', 0)$$);
SELECT es_test.error_of($$SELECT es_append('Note', 'NOTE-2', 'PD_NOTE_ADDED', '{"text": "x", "customer_id": {"id": 1}}', 0)$$);
SELECT es_test.error_of($$SELECT es_append('Customer', 'PD-3', 'CUSTOMER_CREATED', '{}', 0, metadata => '{"personal_data": {}}')$$);
SELECT es_test.error_of($$SELECT es_forget(NULL)$$);
SELECT es_reveal('plain text'), es_reveal('{"a": 1}'::jsonb);
SELECT es_reveal('es1:bm90:AAAA') IS NULL AS unknown_subject;
SELECT es_test.error_of($$SELECT es_reveal('es1:' || encode('PD-2', 'base64') || ':AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA')$$);
SELECT es_test.error_of($$SELECT es_reveal('es1:%%%')$$);

SELECT es_unregister_handler('pd_handler');
SELECT es_unregister_projection('es_customers');
SELECT es_set_snapshot_policy('Customer', NULL);
