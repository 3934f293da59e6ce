# The upgrade from release 1.0: a store installed as 1.0 and filled by the
# released library (events, snapshots, a handler with its checkpoint and
# ledger, an async projection, Kafka routes, the mirror's checkpoint and the
# ingest's offsets); then the new library, which serves the 1.0 catalog's
# SQL functions and whose workers wait for the update; then ALTER EXTENSION
# ultracore_es UPDATE gives it exactly the catalog of a fresh install, keeps
# every row, and delivery goes on from the checkpoints: nothing lost,
# nothing repeated.
#
# The released library is built from this clone's history by test/run-tests
# (ES_RELEASE_1_0, see test/lib.sh); without it (a shallow clone) the store
# is filled through the 1.0 catalog by the new library alone.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/..";
use EsKafka;

my $release_1_0 = $ENV{ES_RELEASE_1_0};
my $kafka = EsKafka->new('bank.in:2', 'es.Account:2');
my $node = $kafka->node('upgrade', q{
ultracore_es.kafka_ingest_topics = 'bank.in'
ultracore_es.kafka_consumer_properties = 'session.timeout.ms=6000;heartbeat.interval.ms=500'
}, $release_1_0 ? (install_path => $release_1_0) : ());
$node->start;
note($release_1_0 ? "release 1.0 from $release_1_0" : 'release 1.0 is not built: its catalog alone');

sub wait_for
{
	my ($query, $what) = @_;
	ok($node->poll_query_until('postgres', $query), $what);
}

# Release 1.0.
$node->safe_psql(
	'postgres', q{
	CREATE EXTENSION ultracore_es VERSION '1.0';
	CREATE TABLE applied (event_id text, aggregate_id text, version bigint, seq bigserial);
	CREATE FUNCTION record(event es_events) RETURNS void LANGUAGE sql AS $$
	    INSERT INTO applied (event_id, aggregate_id, version) VALUES (event.event_id, event.aggregate_id, event.version)
	$$;
	SELECT es_register_handler('record', 'record(es_events)', event_types => ARRAY['ACCOUNT_OPENED', 'ACCOUNT_BALANCE_UPDATED']);
	SELECT es_register_projection('es_accounts');
	SELECT es_set_snapshot_policy('Account', 5);
	SELECT es_set_kafka_route('Customer', 'customers-v1');
	CREATE PROCEDURE append_accounts(prefix text, aggregates int, versions int) LANGUAGE plpgsql AS $$
	BEGIN
	    FOR v IN 1..versions LOOP
	        PERFORM es_append('Account', prefix || a, CASE WHEN v = 1 THEN 'ACCOUNT_OPENED' ELSE 'ACCOUNT_BALANCE_UPDATED' END,
	                          jsonb_build_object('amount', 1), v - 1)
	           FROM generate_series(1, aggregates) a;
	        COMMIT;
	    END LOOP;
	END $$;
	CALL append_accounts('OLD-', 10, 12);
	-- A role whose name needs quoting, with grants the update carries over.
	CREATE ROLE "App-Reader";
	GRANT EXECUTE ON FUNCTION es_read_all(xid8, bigint, text, text[], integer),
	    es_register_handler(text, regprocedure, text[], integer, interval, boolean),
	    es_get_events(text, bigint, bigint, timestamptz) TO "App-Reader";
	GRANT SELECT ON es_customers TO "App-Reader";
});
is($node->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'ultracore_es'}),
	'1.0', 'installed as release 1.0');

# Release 1.0 saved a state given by hand unchecked: a lie about OLD-1.
$node->safe_psql('postgres', q{SELECT es_save_snapshot('OLD-1', 2, '{"balance": 999}')}) if $release_1_0;

# Messages for the ingest: versions 1 and 2 of two accounts.
sub ingest_messages
{
	my ($from, $to) = @_;
	$kafka->produce(map {
			my ($a, $v) = @$_;
			[
				'bank.in', "IN-$a",
				{
					ce_specversion => '1.0',
					ce_id => "in-$a-$v",
					ce_source => '/core-banking/ledger',
					ce_type => $v == 1 ? 'ACCOUNT_OPENED' : 'ACCOUNT_BALANCE_UPDATED',
					ce_aggregatetype => 'Account',
					ce_aggregateversion => $v,
				},
				'{"amount": 2}'
			]
		} map {
			my $a = $_;
			map { [ $a, $_ ] } $from .. $to
		} 1 .. 2);
	return;
}
ingest_messages(1, 2);

# Everything caught up: the handler, the projection, the mirror, the ingest.
sub caught_up
{
	my ($what, $events) = @_;
	wait_for(qq{SELECT count(*) = $events FROM es_events}, "$what: $events events stored");
	wait_for(q{SELECT count(*) = (SELECT count(*) FROM es_events) FROM applied}, "$what: the handler caught up");
	wait_for(
		q{SELECT sum(version) = (SELECT count(*) FROM es_events) FROM es_accounts},
		"$what: the projection caught up");
	wait_for(q{SELECT lag_events = 0 FROM es_kafka_status WHERE component = 'mirror'},
		"$what: the mirror caught up");
	return;
}
my $log_offset = 0;
if ($release_1_0)
{
	caught_up('release 1.0', 124);
	is($kafka->messages('es.Account', 2), 124, 'release 1.0 mirrored every Account event once');

	# The new library: its package installed, the server restarted.
	$log_offset = -s $node->logfile;
	$node->stop;
	$node->{_install_path} = undef;
	$node->start;
}

my $newest = $node->safe_psql('postgres',
	q{SELECT default_version FROM pg_available_extensions WHERE name = 'ultracore_es'});

# Until the update, the new library serves the 1.0 catalog: its SQL
# functions work, its workers wait (and say so) without touching anything.
wait_for(q{SELECT count(*) = 2 FROM pg_stat_activity WHERE backend_type = 'ultracore_es delivery'},
	'the delivery workers run');
$node->wait_for_log(qr/ultracore_es delivery waits: extension ultracore_es in database "postgres" is at version 1\.0/,
	$log_offset);
$node->safe_psql(
	'postgres', q{
	CREATE FUNCTION seen(event es_events) RETURNS void LANGUAGE sql AS 'SELECT';
	SELECT es_register_handler('pre_update', 'seen(es_events)', event_types => ARRAY['ACCOUNT_OPENED'],
	                           max_retries => 1);
	SELECT es_append('Account', 'PRE-1', 'ACCOUNT_OPENED', '{"amount": 1}', 0);
});
is($node->safe_psql('postgres', q{SELECT count(*) FROM es_get_events('PRE-1')}), '1',
	'the 1.0 catalog appends and reads with the new library');
is($node->safe_psql('postgres', q{SELECT count(*) FROM applied WHERE aggregate_id = 'PRE-1'}), '0',
	'nothing is delivered before the update');

# What must survive the update, row for row.
my $state_query = q{
	SELECT (SELECT md5(string_agg(ROW(e.event_id, e.event_type, e.aggregate_type, e.aggregate_id, e.version, e.position,
	                                      e.tx_id, e.occurred_at, e.recorded_at, e.causation_id, e.correlation_id, e.data,
	                                      e.metadata, e.schema_version, e.appended_by)::text, '|' ORDER BY position))
	          FROM es_events e),
	       (SELECT md5(string_agg(s.aggregate_id || s.version || s.state::text || s.fingerprint, '|'
	                              ORDER BY s.aggregate_id, s.version)) FROM es_snapshots s WHERE automatic),
	       (SELECT string_agg(name || ' ' || checkpoint_tx || ' ' || checkpoint_position || ' ' || events_processed,
	                          ', ' ORDER BY name) FROM es_consumers WHERE name <> 'kafka_ingest'),
	       (SELECT count(*) FROM es_handled),
	       (SELECT string_agg(topic || '[' || partition || '] ' || next_offset, ', ' ORDER BY topic, partition)
	          FROM es_kafka_offsets),
	       (SELECT string_agg(aggregate_type || ' ' || topic, ', ') FROM es_kafka_routes),
	       (SELECT md5(string_agg(a::text, '|' ORDER BY account_id)) FROM es_accounts a)};
my $before = $node->safe_psql('postgres', $state_query);
my ($snapshots) = $node->safe_psql('postgres', q{SELECT count(*) FROM es_snapshots});
cmp_ok($snapshots, '>', 0, 'automatic snapshots taken');

# The update, and the state it leaves, in one transaction: the workers go
# on only once it commits.
is($node->safe_psql('postgres', "BEGIN; ALTER EXTENSION ultracore_es UPDATE; $state_query; COMMIT;"),
	$before, 'events, snapshots, checkpoints, ledger, offsets, routes and read model kept');
is($node->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'ultracore_es'}),
	$newest, "updated to release $newest");
if ($release_1_0)
{
	is( $node->safe_psql(
			'postgres', q{
		SELECT s1.state = s2.state AND NOT s1.state ? 'balance'
		  FROM es_load_aggregate('OLD-1', at_version => 2) s1, es_load_aggregate('OLD-2', at_version => 2) s2}),
		't', 'a state saved by hand under 1.0 no longer serves loads: the events are folded');
}

is( $node->safe_psql(
		'postgres', q{
	SELECT string_agg(p::text, ', ' ORDER BY p::text) FROM unnest(ARRAY[
	    'es_read_all(xid8, bigint, text, text[], integer)', 'es_read_all(bigint, bigint, text, text[], integer)',
	    'es_read_all(text, bigint, text, text[], integer)', 'es_read_log(bigint, bigint, integer)',
	    'es_read_log_start(xid8)',
	    'es_register_handler(text, regprocedure, text[], integer, interval, boolean, interval, integer)',
	    'es_get_events(text, bigint, bigint, timestamptz, timestamptz)', 'es_reveal(text)', 'es_reveal(jsonb)']::regprocedure[]) p
	 WHERE has_function_privilege('App-Reader', p, 'EXECUTE')}),
	'es_get_events(text,bigint,bigint,timestamp with time zone,timestamp with time zone), '
	  . 'es_read_all(bigint,bigint,text,text[],integer), es_read_all(text,bigint,text,text[],integer), '
	  . 'es_read_all(xid8,bigint,text,text[],integer), es_read_log(bigint,bigint,integer), '
	  . 'es_read_log_start(xid8), es_register_handler(text,regprocedure,text[],integer,interval,boolean,interval,integer), '
	  . 'es_reveal(jsonb), es_reveal(text)',
	'grants carried over to the new signatures and to es_read_log, and es_reveal to the readers of the read-model views, '
	  . 'for a role whose name needs quoting');
is($node->safe_psql('postgres', q{SET ROLE "App-Reader"; SELECT count(*) >= 0 FROM es_customers}),
	't', 'a reader of es_customers under 1.0 still reads it');
$node->safe_psql('postgres',
	q{REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM "App-Reader"; REVOKE ALL ON es_customers FROM "App-Reader"; DROP ROLE "App-Reader"});

# Events of 1.0 carry no hash: the first digest seals them by content, and a
# change to one is found through its block.
is( $node->safe_psql(
		'postgres', q{
	SELECT (SELECT count(*) FROM es_events WHERE hash IS NULL) > 100,
	       (SELECT count(*) FROM es_verify()), (es_digest() ->> 'events')::bigint = (SELECT count(*) FROM es_events)}),
	't|0|t', 'the 1.0 history verifies and is sealed by the first digest');
is( $node->safe_psql(
		'postgres', q{
	BEGIN;
	ALTER TABLE es_events DISABLE TRIGGER es_events_append_only;
	UPDATE es_events SET data = '{"balance": 1000000}' WHERE position = (SELECT min(position) FROM es_events);
	SELECT string_agg(regexp_replace(problem, '\d+', 'N', 'g'), ', ') FROM es_verify();
	ROLLBACK;}),
	'ledger block N no longer adds up: N events below its horizon, N sealed, and another hash',
	'a change to an event of 1.0 is found through the block that sealed it');

# The catalog of the updated store, object by object, against a fresh
# install of the same release in another database.
my $catalog_query = q{
	WITH ext AS (SELECT oid, extconfig, extcondition FROM pg_extension WHERE extname = 'ultracore_es'),
	members AS (
	    SELECT d.classid, d.objid FROM pg_depend d, ext
	     WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e')
	SELECT string_agg(line, E'\n' ORDER BY line) FROM (
	    -- every member, with its comment
	    SELECT 'object ' || pg_describe_object(classid, objid, 0) || ' -- '
	           || coalesce(obj_description(objid, classid::regclass::text), '(none)') AS line
	      FROM members
	    UNION ALL
	    -- functions: their whole definitions and privileges
	    SELECT 'function ' || pg_get_functiondef(p.oid) || ' acl ' || coalesce(p.proacl::text, '(default)')
	      FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
	     WHERE p.prokind <> 'a'
	    UNION ALL
	    -- columns of tables, views and types
	    SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
	           || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
	           || coalesce(' collate ' || co.collname, '')
	           || coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), '')
	           || ' #' || a.attnum
	      FROM pg_class c
	      JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
	      JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
	      LEFT JOIN pg_collation co ON co.oid = a.attcollation AND a.attcollation <> 100
	      LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
	    UNION ALL
	    -- relations: kind, privileges, storage options
	    SELECT 'relation ' || c.relname || ' ' || c.relkind::text || ' acl ' || coalesce(c.relacl::text, '(default)')
	           || ' options ' || coalesce(c.reloptions::text, '')
	      FROM pg_class c JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
	    UNION ALL
	    -- indexes, constraints, triggers, views
	    SELECT 'index ' || pg_get_indexdef(i.indexrelid)
	      FROM pg_index i JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = i.indrelid
	    UNION ALL
	    SELECT 'constraint ' || con.conrelid::regclass || ' ' || con.conname || ' ' || pg_get_constraintdef(con.oid)
	      FROM pg_constraint con JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = con.conrelid
	    UNION ALL
	    SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' enabled ' || t.tgenabled::text
	      FROM pg_trigger t JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = t.tgrelid
	     WHERE NOT t.tgisinternal
	    UNION ALL
	    SELECT 'view ' || c.relname || ' ' || pg_get_viewdef(c.oid)
	      FROM pg_class c JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
	     WHERE c.relkind IN ('v', 'm')
	    UNION ALL
	    SELECT 'sequence ' || s.seqrelid::regclass || ' ' || format_type(s.seqtypid, NULL) || ' '
	           || s.seqincrement || ' ' || s.seqmin || ' ' || s.seqmax
	      FROM pg_sequence s JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = s.seqrelid
	    UNION ALL
	    -- what pg_dump keeps of the extension's tables
	    SELECT 'dumped ' || cfg.rel::regclass || ' ' || cfg.cond
	      FROM ext, unnest(ext.extconfig, ext.extcondition) AS cfg(rel, cond)
	) described};
my $updated = $node->safe_psql('postgres', $catalog_query);
$node->safe_psql('postgres', q{CREATE DATABASE fresh});
$node->safe_psql('fresh', q{CREATE EXTENSION ultracore_es});
my $fresh = $node->safe_psql('fresh', $catalog_query);
cmp_ok(length($fresh), '>', 10000, 'the catalog description is not empty');
is($updated, $fresh, 'the updated catalog equals a fresh install: functions, tables, columns, indexes, triggers, views, privileges, comments');
if ($updated ne $fresh)
{
	my %fresh = map { $_ => 1 } split /\n/, $fresh;
	my %updated = map { $_ => 1 } split /\n/, $updated;
	diag("only after the update: $_") foreach grep { !$fresh{$_} } sort keys %updated;
	diag("only in a fresh install: $_") foreach grep { !$updated{$_} } sort keys %fresh;
}

# es_events is partitioned: the 1.0 table is its first partition, not
# rewritten (its file is the same), then bounded by the worker below the
# partitions it makes.
is( $node->safe_psql(
		'postgres', q{
	SELECT c.relkind, (SELECT count(*) FROM es_events_1_0) = (SELECT count(*) FROM es_events),
	       (SELECT count(*) FROM pg_depend d WHERE d.objid = 'es_events_1_0'::regclass AND d.deptype = 'e')
	  FROM pg_class c WHERE c.oid = 'es_events'::regclass}),
	'p|t|0', 'es_events is partitioned; the 1.0 table holds the events stored before, and is the store\'s data, not the extension\'s');
wait_for(q{SELECT to_position IS NOT NULL FROM es_partitions WHERE partition = 'es_events_1_0'::regclass},
	'the worker bounded the 1.0 table');
# Its bound is ultracore_es.partitions_ahead partitions past the last
# position: the appends reach it later.  Here, at once.
$node->safe_psql('postgres',
	q{SELECT setval('es_events_position_seq', to_position - 1) FROM es_partitions WHERE partition = 'es_events_1_0'::regclass});
wait_for(q{SELECT count(*) >= 2 FROM es_partitions WHERE NOT is_default AND partition <> 'es_events_1_0'::regclass},
	'the worker made partitions ahead, from that bound');
is( $node->safe_psql(
		'postgres', q{
	SELECT c.convalidated, p.from_position IS NULL, (SELECT min(from_position) FROM es_partitions
	                                                 WHERE NOT is_default AND from_position IS NOT NULL) = p.to_position
	  FROM es_partitions p JOIN pg_constraint c ON c.conrelid = p.partition AND c.conname = 'es_events_1_0_bound'
	 WHERE p.partition = 'es_events_1_0'::regclass}),
	't|t|t', 'the 1.0 table holds the positions below the first partition made, by a validated CHECK');

# The 1.0 table's event ids stay unique: its primary key is probed too.
my $stored_1_0 = $node->safe_psql('postgres', q{SELECT count(*) FROM es_events_1_0});
$node->psql(
	'postgres', q{
	SELECT es_append('Account', 'ID-REUSE', 'ACCOUNT_OPENED', '{}', 0,
	                 event_id => (SELECT event_id FROM es_events_1_0 WHERE aggregate_id = 'OLD-3' AND version = 1))},
	stderr => \my $reuse);
like($reuse, qr/event id "[^"]+" is already used by another event/, 'an event id stored by release 1.0 is not taken again');

# Delivery goes on from the checkpoints: new events reach the handler, the
# projection and Kafka once; new messages are ingested from the stored
# offsets, the old ones not again.
$node->safe_psql('postgres', q{CALL append_accounts('NEW-', 5, 4)});
ingest_messages(3, 4);
caught_up('after the update', 149);
wait_for(q{SELECT count(*) = 1 FROM es_handled WHERE consumer = 'pre_update' AND event_id IN
            (SELECT event_id FROM es_events WHERE aggregate_id = 'PRE-1')},
	'the handler registered through the 1.0 catalog delivers');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) || ' ' || count(DISTINCT event_id) || ' '
	       || (SELECT count(*) FROM es_handled WHERE consumer = 'record') FROM applied}),
	'149 149 149', 'every event handled once, across the update');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM (SELECT version, lag(version) OVER (PARTITION BY aggregate_id ORDER BY seq) AS prev
	                        FROM applied) s WHERE version <> prev + 1}),
	'0', 'in version order');
is($kafka->messages('es.Account', 2), 149, 'the mirror went on from its checkpoint, no event sent twice');
is($node->safe_psql('postgres', q{SELECT string_agg(event_id, ',' ORDER BY event_id) FROM es_events WHERE aggregate_id LIKE 'IN-%'}),
	'in-1-1,in-1-2,in-1-3,in-1-4,in-2-1,in-2-2,in-2-3,in-2-4', 'the ingest went on from its offsets');
is($node->safe_psql('postgres', q{SELECT count(*) FROM es_kafka_dead_letters}), '0', 'no message dead-lettered');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FILTER (WHERE tableoid = 'es_events_1_0'::regclass), count(*) FILTER (WHERE tableoid <> 'es_events_1_0'::regclass)
	  FROM es_events}),
	"$stored_1_0|" . (149 - $stored_1_0), 'the events appended after the update are in the partitions made');
$node->safe_psql('postgres', q{SELECT es_append('Account', 'OLD-3', 'ACCOUNT_BALANCE_UPDATED', '{"amount": 1}', 12)});
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*), count(DISTINCT e.tableoid), bool_and(g.version = g.n)
	  FROM (SELECT g.event_id, g.version, row_number() OVER () AS n FROM es_get_events('OLD-3') g) g
	  JOIN es_events e ON e.event_id = g.event_id}),
	'13|2|t', 'an aggregate of 1.0 goes on in a new partition, read across both in version order');

# A message whose id the 1.0 table holds, without a version, once that
# table is bounded: the ingest looks its id up there (new events go to
# partitions whose ids es_event_ids' key holds, and the 1.0 table's it
# does not), so it is not appended: here, other content, a dead letter.
my $old_id = $node->safe_psql('postgres', q{SELECT event_id FROM es_events_1_0 WHERE aggregate_id = 'OLD-3' AND version = 1});
$kafka->produce(
	map {
		[
			'bank.in', 'OLD-3',
			{
				ce_specversion => '1.0',
				ce_id => $_,
				ce_source => '/core-banking/ledger',
				ce_type => 'ACCOUNT_BALANCE_UPDATED',
				ce_aggregatetype => 'Account',
			},
			'{"amount": 2}'
		]
	} ($old_id, 'after-old-id'));
wait_for(q{SELECT count(*) = 1 FROM es_events WHERE event_id = 'after-old-id'}, 'the message after it appended');
is( $node->safe_psql(
		'postgres', qq{
	SELECT (SELECT count(*) FROM es_events WHERE event_id = '$old_id'),
	       (SELECT count(*) FROM es_kafka_dead_letters WHERE headers->>'ce_id' = '$old_id')}),
	'1|1', 'an id of the 1.0 table is not taken again by the ingest');

$node->stop;
$kafka->stop;
done_testing();
