-- Upcasting: the guide's CUSTOMER_CREATED v1 {name, email} read as v2 with a phone field.
SELECT schema_version FROM es_event_types WHERE event_type = 'CUSTOMER_CREATED';
SELECT version FROM es_append('Customer', 'UP-C1', 'CUSTOMER_CREATED', '{"name": "John Doe", "email": "john@example.com"}', 0);

CREATE FUNCTION bank.customer_created_v1_to_v2(data jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT data || jsonb_build_object('phone', coalesce(data->'phone', 'null')) $$;
SELECT es_register_upcaster('CUSTOMER_CREATED', 1, 'bank.customer_created_v1_to_v2(jsonb)');
-- The type's current schema version is now 2; new events are stored as v2.
SELECT schema_version FROM es_event_types WHERE event_type = 'CUSTOMER_CREATED';
SELECT version FROM es_append('Customer', 'UP-C2', 'CUSTOMER_CREATED',
                              '{"name": "Jane Roe", "email": "jane@example.com", "phone": "+61400000001"}', 0);

-- Reads return the upcast payload (and its version); stored rows never change.
SELECT aggregate_id, schema_version, data FROM es_get_events('UP-C1');
SELECT aggregate_id, schema_version, data FROM es_get_events('UP-C2');
SELECT aggregate_id, schema_version, data FROM es_events WHERE aggregate_id IN ('UP-C1', 'UP-C2') ORDER BY 1;
SELECT aggregate_id, schema_version, data->>'phone' AS phone FROM es_read_all(event_types => ARRAY['CUSTOMER_CREATED'])
 WHERE aggregate_id LIKE 'UP-%' ORDER BY 1;
SELECT state FROM es_load_aggregate('UP-C1');

-- A chain: v2 -> v3 renames name to full_name; a v1 payload goes through both.
CREATE FUNCTION bank.customer_created_v2_to_v3(data jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT (data - 'name') || jsonb_build_object('full_name', data->'name') $$;
SELECT es_register_upcaster(event_type => 'CUSTOMER_CREATED', from_version => 2,
                            function => 'bank.customer_created_v2_to_v3(jsonb)');
SELECT event_type, from_version, upcaster FROM es_upcasters ORDER BY 1, 2;
SELECT aggregate_id, schema_version, data FROM es_get_events('UP-C1')
UNION ALL
SELECT aggregate_id, schema_version, data FROM es_get_events('UP-C2');
SELECT state FROM es_load_aggregate('UP-C1');

-- Snapshots made before an upcaster changed are stale.
SELECT es_save_snapshot('UP-C1');
SELECT usable FROM es_list_snapshots('UP-C1');
CREATE OR REPLACE FUNCTION bank.customer_created_v2_to_v3(data jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT (data - 'name') || jsonb_build_object('full_name', upper(data->>'name')) $$;
SELECT usable FROM es_list_snapshots('UP-C1');
SELECT state->'full_name' AS full_name, snapshot_version FROM es_load_aggregate('UP-C1');
SELECT es_delete_snapshots('UP-C1', stale_only => true);

-- A hole in the chain is an error that says which upcaster is missing.
BEGIN;
CREATE FUNCTION bank.identity_upcaster(data jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT $1';
SELECT es_register_upcaster('CUSTOMER_CREATED', 4, 'bank.identity_upcaster(jsonb)');
SELECT schema_version FROM es_event_types WHERE event_type = 'CUSTOMER_CREATED';
SELECT es_test.error_of($$SELECT * FROM es_get_events('UP-C1')$$);
ROLLBACK;

-- An upcaster must return a JSON object.
BEGIN;
SELECT version FROM es_append('Customer', 'UP-C1', 'CUSTOMER_UPDATED', '{"email": "x@y"}');
CREATE FUNCTION bank.bad_upcaster(data jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '[1]'::jsonb $$;
SELECT es_register_upcaster('CUSTOMER_UPDATED', 1, 'bank.bad_upcaster(jsonb)');
SELECT es_test.error_of($$SELECT * FROM es_get_events('UP-C1')$$);
CREATE FUNCTION bank.null_upcaster(data jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT NULL::jsonb $$;
SELECT es_register_upcaster('CUSTOMER_UPDATED', 1, 'bank.null_upcaster(jsonb)');
SELECT es_test.error_of($$SELECT * FROM es_get_events('UP-C1')$$);
ROLLBACK;

-- Upcasters that cannot be.
SELECT es_test.error_of($$SELECT es_register_upcaster('CUSTOMER_CREATED', 0, 'bank.customer_created_v1_to_v2(jsonb)')$$);
SELECT es_test.error_of($$SELECT es_register_upcaster('NO_SUCH_TYPE', 1, 'bank.customer_created_v1_to_v2(jsonb)')$$);
SELECT es_test.error_of($$SELECT es_register_upcaster('CUSTOMER_CREATED', 1, 'bank.account_reducer(jsonb, es_events)')$$);
SELECT es_test.error_of($$SELECT es_register_upcaster('CUSTOMER_CREATED', NULL, 'bank.customer_created_v1_to_v2(jsonb)')$$);
