/* ultracore_es_proxy.sql: a proxy database that shards ultracore_es with PL/Proxy */

-- Run in the proxy database, after CREATE EXTENSION plproxy (Debian's
-- postgresql-15-plproxy), in the schema where the shards have ultracore_es
-- (public by default):
--
--     psql -v ON_ERROR_STOP=1 -d bank -f sharding/ultracore_es_proxy.sql
--
-- The proxy does not install ultracore_es.  It has the store's write and
-- aggregate-read functions under the same names, parameters, types and
-- defaults, in LANGUAGE plproxy: each call runs, as one remote statement, the
-- function of the same schema-qualified name on the shard that holds the
-- aggregate (es_shard_hash below).  sharding/make-fleet runs this file and
-- then makes the cluster; by hand, the cluster is a SQL/MED server of the
-- plproxy foreign-data wrapper (which CREATE EXTENSION plproxy makes), one
-- option p<i> per shard, in shard order, and a user mapping that says which
-- role the proxy connects to the shards as:
--
--     CREATE SERVER ultracore_es_shards FOREIGN DATA WRAPPER plproxy OPTIONS (
--         p0 'host=shard0.bank.internal port=5432 dbname=bank_shard_0',
--         p1 'host=shard1.bank.internal port=5432 dbname=bank_shard_1');
--     CREATE USER MAPPING FOR teller_app SERVER ultracore_es_shards
--         OPTIONS (user 'teller_app', password '...');
--     GRANT USAGE ON FOREIGN SERVER ultracore_es_shards TO teller_app;
--     GRANT EXECUTE ON FUNCTION es_append(text, text, text, jsonb, bigint, jsonb, text, text,
--         text, timestamptz), ... TO teller_app;
--
-- and on each shard, SELECT es_grant_access('teller_app', 'writer').  A
-- mapping per application role keeps es_events.appended_by telling the roles
-- apart; a PUBLIC mapping makes every event the mapped role's.
--
-- The shard count must be a power of two: PL/Proxy maps a hash to shard
-- hash & (count - 1), and refuses a cluster of another size.  Shard i is
-- option p<i> for ever: reordering the options moves aggregates.
--
-- What a client sees through the proxy:
--   - A shard's error comes back with its SQLSTATE, so a version conflict is
--     still UE001.  PL/Proxy's plproxy_remote_error() (src/main.c) re-raises
--     it as "public.es_append(10): [bank_shard_1] REMOTE ERROR: <message>",
--     with the detail and hint prefixed "Remote detail: " and "Remote hint: ".
--     After any such error PL/Proxy drops that shard connection, and the
--     session's next call to the shard connects anew (a fork on the shard:
--     PgBouncer in front of each shard makes it cheap).
--   - A shard that cannot be reached fails the calls for its aggregates with
--     SQLSTATE XX000 and "PL/Proxy function public.es_append(10):
--     [bank_shard_1] PQconnectPoll: connection to server ... failed: ..."
--     (PQconnectStart for a Unix socket); the other shards' aggregates go
--     on.  PL/Proxy 2.10 has no connect timeout of its own (libpq ignores
--     connect_timeout in the non-blocking connects it makes): bound the wait
--     for a host that does not answer with the proxy's statement_timeout,
--     which cancels the remote query too.
--   - Each call commits on its shard when it returns, whatever the proxy's
--     transaction then does: BEGIN ... ROLLBACK on the proxy does not take
--     an append back, and there is no transaction across aggregates.  One
--     es_append_batch stays atomic (one aggregate, one shard).  A call whose
--     answer is lost (a timeout, a dropped connection) may have committed:
--     give events an event_id, so that sending them again is safe.

BEGIN;

------------------------------------------------------------------------------
-- Routing
------------------------------------------------------------------------------

-- The shard of an aggregate is es_shard_hash(aggregate_id) & (shards - 1).
-- A bank's aggregate must never move, so the hash is one whose value is
-- fixed by a standard, not by the server: the first four bytes of the
-- SHA-256 of the id's UTF-8 bytes, read as a big-endian signed integer.
-- PostgreSQL's hashtext() is not that: its values are an implementation
-- detail that changed between 8.3 and 8.4 and differ between byte orders and database
-- encodings, so an upgrade or a move of the proxy could route existing
-- aggregates to a shard that does not have them.  SHA-256 (not MD5, which
-- servers in FIPS mode refuse) gives the same answer on any machine and in
-- any language, so a client or a migration tool can compute it too; it
-- costs a few microseconds, next to a round trip to the shard.  With the
-- low bits as the shard, doubling the shard count would send each aggregate
-- of shard i either to i or to i + count (resharding is not supported: see
-- README).
--
-- A NULL id routes like '', so that the shard refuses it with its own error
-- (22004), as a direct call would, rather than PL/Proxy with an XX000 about
-- its hash.  STABLE, as convert_to is: PL/Proxy runs "select * from
-- es_shard_hash($1)" at each call, and the planner inlines a SQL function
-- only when its body is no more volatile than it says; declared IMMUTABLE,
-- it would be run as a function call, whose setup took a fifth of the
-- proxy's time per append (test/bench/sharding).
CREATE FUNCTION es_shard_hash(aggregate_id text)
RETURNS integer
LANGUAGE sql STABLE PARALLEL SAFE
RETURN ('x' || encode(substring(sha256(convert_to(coalesce(aggregate_id, ''), 'UTF8')) FROM 1 FOR 4), 'hex'))::bit(32)::integer;
COMMENT ON FUNCTION es_shard_hash(text) IS
    'ultracore_es proxy: the routing hash of an aggregate (the first 4 bytes of SHA-256 of its UTF-8 id, big-endian); its shard is es_shard_hash(id) & (shards - 1)';

------------------------------------------------------------------------------
-- The store's result types, as the shards define them (PL/Proxy asks the
-- shards for these columns by name and type)
------------------------------------------------------------------------------

CREATE TYPE es_append_result AS (
    event_id    text,
    version     bigint,
    position    bigint
);
COMMENT ON TYPE es_append_result IS
    'ultracore_es proxy: what an append stored (as on the shards): the event id, the aggregate version it made, its position on its shard';

-- es_events as of ultracore_es 1.1.  Identifiers in byte order, as on the
-- shards.  tx_id and position are the shard's: they order one shard's events
-- and mean nothing across shards.
CREATE TYPE es_events AS (
    event_id        text COLLATE "C",
    event_type      text COLLATE "C",
    aggregate_type  text COLLATE "C",
    aggregate_id    text COLLATE "C",
    version         bigint,
    position        bigint,
    tx_id           xid8,
    occurred_at     timestamptz,
    recorded_at     timestamptz,
    causation_id    text COLLATE "C",
    correlation_id  text COLLATE "C",
    data            jsonb,
    metadata        jsonb,
    schema_version  integer,
    appended_by     text,
    hash            bytea
);
COMMENT ON TYPE es_events IS
    'ultracore_es proxy: an event as its shard stores it (position and tx_id are per shard)';

CREATE TYPE es_aggregate_state AS (
    aggregate_type      text,
    state               jsonb,
    version             bigint,
    snapshot_version    bigint,
    events_applied      bigint
);
COMMENT ON TYPE es_aggregate_state IS
    'ultracore_es proxy: an aggregate''s state at a version, the snapshot it started from and the events folded after it (as on the shards)';

------------------------------------------------------------------------------
-- The store's functions, routed to the aggregate's shard.  Same names,
-- parameters and defaults as ultracore_es 1.1: the proxy fills in the
-- defaults and sends every argument.
------------------------------------------------------------------------------

CREATE FUNCTION es_append(
    aggregate_type      text,
    aggregate_id        text,
    event_type          text,
    data                jsonb DEFAULT '{}',
    expected_version    bigint DEFAULT NULL,
    metadata            jsonb DEFAULT '{}',
    event_id            text DEFAULT NULL,
    causation_id        text DEFAULT NULL,
    correlation_id      text DEFAULT NULL,
    occurred_at         timestamptz DEFAULT NULL)
RETURNS es_append_result
LANGUAGE plproxy AS $$
    CLUSTER 'ultracore_es_shards';
    RUN ON es_shard_hash(aggregate_id);
$$;
COMMENT ON FUNCTION es_append(text, text, text, jsonb, bigint, jsonb, text, text, text, timestamptz) IS
    'ultracore_es proxy: es_append on the aggregate''s shard';

CREATE FUNCTION es_append_batch(
    aggregate_type      text,
    aggregate_id        text,
    events              jsonb,
    expected_version    bigint DEFAULT NULL,
    metadata            jsonb DEFAULT NULL,
    causation_id        text DEFAULT NULL,
    correlation_id      text DEFAULT NULL)
RETURNS SETOF es_append_result
LANGUAGE plproxy ROWS 100 AS $$
    CLUSTER 'ultracore_es_shards';
    RUN ON es_shard_hash(aggregate_id);
$$;
COMMENT ON FUNCTION es_append_batch(text, text, jsonb, bigint, jsonb, text, text) IS
    'ultracore_es proxy: es_append_batch on the aggregate''s shard (atomic there)';

CREATE FUNCTION es_get_events(
    aggregate_id        text,
    from_version        bigint DEFAULT 1,
    to_version          bigint DEFAULT NULL,
    end_timestamp       timestamptz DEFAULT NULL,
    as_of               timestamptz DEFAULT NULL)
RETURNS SETOF es_events
LANGUAGE plproxy ROWS 100 AS $$
    CLUSTER 'ultracore_es_shards';
    RUN ON es_shard_hash(aggregate_id);
$$;
COMMENT ON FUNCTION es_get_events(text, bigint, bigint, timestamptz, timestamptz) IS
    'ultracore_es proxy: es_get_events on the aggregate''s shard';

CREATE FUNCTION es_load_aggregate(
    aggregate_id        text,
    at_version          bigint DEFAULT NULL,
    at_time             timestamptz DEFAULT NULL,
    as_of               timestamptz DEFAULT NULL)
RETURNS es_aggregate_state
LANGUAGE plproxy AS $$
    CLUSTER 'ultracore_es_shards';
    RUN ON es_shard_hash(aggregate_id);
$$;
COMMENT ON FUNCTION es_load_aggregate(text, bigint, timestamptz, timestamptz) IS
    'ultracore_es proxy: es_load_aggregate on the aggregate''s shard';

CREATE FUNCTION es_aggregate_version(aggregate_id text)
RETURNS bigint
LANGUAGE plproxy AS $$
    CLUSTER 'ultracore_es_shards';
    RUN ON es_shard_hash(aggregate_id);
$$;
COMMENT ON FUNCTION es_aggregate_version(text) IS
    'ultracore_es proxy: es_aggregate_version on the aggregate''s shard';

-- As on the shards: no role may call the store's functions until granted
-- (see the top of this file).  es_shard_hash stays callable by all: PL/Proxy
-- calls it as the caller, and it tells nothing but where an id would go.
REVOKE ALL ON FUNCTION
    es_append(text, text, text, jsonb, bigint, jsonb, text, text, text, timestamptz),
    es_append_batch(text, text, jsonb, bigint, jsonb, text, text),
    es_get_events(text, bigint, bigint, timestamptz, timestamptz),
    es_load_aggregate(text, bigint, timestamptz, timestamptz),
    es_aggregate_version(text)
FROM PUBLIC;

COMMIT;
