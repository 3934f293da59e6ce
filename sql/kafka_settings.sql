-- The Kafka settings, routes and status as SQL sees them.  The mirror and
-- the ingest themselves run against brokers: test/t/005 and 006.

-- Kafka is off by default; the other settings have their defaults.
SELECT name, setting, context FROM pg_settings WHERE name LIKE 'ultracore_es.kafka%' ORDER BY name;

-- The launcher and the delivery workers run; no Kafka worker while Kafka is off.
SELECT es_test.wait_until($$SELECT count(*) = 2 FROM pg_stat_activity
                             WHERE backend_type = 'ultracore_es delivery'$$) AS delivery_running;
SELECT backend_type, count(*) FROM pg_stat_activity WHERE backend_type LIKE 'ultracore_es%'
 GROUP BY backend_type ORDER BY backend_type;

-- With Kafka off there is nothing to report.
SELECT count(*) FROM es_kafka_status;

-- An unknown partitioner is refused when the configuration is written.
ALTER SYSTEM SET ultracore_es.kafka_partitioner = 'java';
ALTER SYSTEM SET ultracore_es.kafka_partitioner = 'murmur2_random';
ALTER SYSTEM RESET ultracore_es.kafka_partitioner;

-- The standbys the mirror waits for: a list of slot names.
ALTER SYSTEM SET ultracore_es.kafka_standby_slots = 'standby 1';
ALTER SYSTEM SET ultracore_es.kafka_standby_slots = 'standby1, "standby2"';
ALTER SYSTEM RESET ultracore_es.kafka_standby_slots;

-- Kafka's names: an empty consumer group, a topic name Kafka would refuse
-- (another character, too long) are refused when the configuration is written.
ALTER SYSTEM SET ultracore_es.kafka_group_id = '';
ALTER SYSTEM SET ultracore_es.kafka_fence_topic = 'fence topic';
ALTER SYSTEM SET ultracore_es.kafka_topic_prefix = 'es/';
SELECT format('ALTER SYSTEM SET ultracore_es.kafka_fence_topic = %L', repeat('f', 250)) \gexec
SELECT format('ALTER SYSTEM SET ultracore_es.kafka_topic_prefix = %L', repeat('p', 122)) \gexec
ALTER SYSTEM SET ultracore_es.kafka_fence_topic = '';
ALTER SYSTEM SET ultracore_es.kafka_topic_prefix = 'bank-1.es_';
ALTER SYSTEM RESET ultracore_es.kafka_fence_topic;
ALTER SYSTEM RESET ultracore_es.kafka_topic_prefix;

-- The properties may hold credentials: only superusers read them.
CREATE ROLE regress_kafka_reader;
SET ROLE regress_kafka_reader;
SHOW ultracore_es.kafka_producer_properties;
SHOW ultracore_es.kafka_consumer_properties;
SHOW ultracore_es.kafka_brokers;
RESET ROLE;
DROP ROLE regress_kafka_reader;

-- Routes: a topic per aggregate type, NULL for none, invalid names refused.
SELECT es_set_kafka_route('Customer', 'customers-v1');
SELECT es_set_kafka_route('Loan', NULL);
SELECT es_set_kafka_route('Customer', 'customers.v2');
SELECT es_set_kafka_route('Payment', 'payments v1');
SELECT es_set_kafka_route('Payment', '..');
SELECT es_set_kafka_route('Payment', repeat('p', 250));
SELECT * FROM es_kafka_routes ORDER BY aggregate_type;
DELETE FROM es_kafka_routes;
