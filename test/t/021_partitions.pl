# es_events partitioned by position, on a store of its own: partitions of
# 1,000 positions made by the worker as 5,000 events arrive; es_archive
# moves those wholly below a position into the archive tablespace, refused
# while a consumer has not passed them, and every read still returns their
# events: es_get_events and es_load_aggregate across the boundary,
# es_read_all, a projection rebuilt from the first event; es_drop_history
# drops them once exported and covered by snapshots, after which loads
# start from the snapshots and es_get_events says what was dropped; a dump
# restored into a new cluster keeps every partition and event.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/..";
use EsNode;
use EsWriters;

my $node = EsNode->new('partitions', q{
ultracore_es.worker_poll_interval = 100
ultracore_es.partition_events = 1000
allow_in_place_tablespaces = on
});
$node->start;

sub wait_for
{
	my ($query, $what) = @_;
	ok($node->poll_query_until('postgres', $query), $what);
}

$node->safe_psql(
	'postgres', q{
	CREATE EXTENSION ultracore_es;
	CREATE TABLESPACE es_archive_space LOCATION '';
	CREATE TABLE seen (event_id text PRIMARY KEY, aggregate_id text, version bigint);
	CREATE FUNCTION see(event es_events) RETURNS void LANGUAGE sql AS $$
	    INSERT INTO seen VALUES (event.event_id, event.aggregate_id, event.version)
	$$;
	SELECT es_register_handler('see', 'see(es_events)', replay_history => true);
	SELECT es_register_projection('es_accounts');
	SELECT es_set_snapshot_policy('Account', 10);
	CREATE PROCEDURE append_accounts(accounts int, versions int) LANGUAGE plpgsql AS $$
	BEGIN
	    FOR v IN 1..versions LOOP
	        PERFORM es_append('Account', 'ACC-' || a, CASE WHEN v = 1 THEN 'ACCOUNT_OPENED' ELSE 'ACCOUNT_BALANCE_UPDATED' END,
	                          jsonb_build_object('balance', v), v - 1)
	           FROM generate_series(1, accounts) a;
	        COMMIT;
	    END LOOP;
	END $$;
});

# The worker keeps ultracore_es.partitions_ahead (2) partitions made past the
# last position; a burst faster than its passes would go to the DEFAULT
# partition: the partitions for this one are made first.
wait_for(q{SELECT count(*) >= 2 FROM es_partitions WHERE NOT is_default},
	'the worker made partitions ahead of the first append');
$node->safe_psql('postgres', q{
	SELECT es_make_partitions(5100);
	SELECT es_append('Customer', 'CUST-1', 'CUSTOMER_CREATED', '{"name": "Ada"}', 0);
	CALL append_accounts(50, 100);});
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*), count(DISTINCT tableoid) >= 5,
	       count(*) FILTER (WHERE tableoid = 'es_events_overflow'::regclass)
	  FROM es_events}),
	'5001|t|0', '5,000 events in at least five partitions, none in the DEFAULT one');
wait_for(q{SELECT count(*) >= 2 FROM es_partitions
            WHERE NOT is_default AND from_position > (SELECT last_value FROM es_events_position_seq)},
	'the worker keeps partitions made ahead of the appends');
wait_for(q{SELECT count(*) = 5001 FROM seen}, 'the handler saw them all');

# es_archive: refused without a tablespace, and below what a consumer has not passed.
my ($first_bound, $events_below) = split /\|/, $node->safe_psql(
	'postgres', q{
	SELECT p.to_position, (SELECT count(*) FROM es_events e WHERE e.position < p.to_position)
	  FROM es_partitions p WHERE NOT p.is_default ORDER BY p.from_position LIMIT 1 OFFSET 2});
$node->psql('postgres', "SELECT es_archive($first_bound)", stderr => \my $err);
like($err, qr/ultracore_es\.archive_tablespace is not set/, 'refused without an archive tablespace');
$node->append_conf('postgresql.conf', "ultracore_es.archive_tablespace = 'es_archive_space'");
$node->reload;
# A handler registered from the first event, paused at once: it has passed none.
$node->safe_psql('postgres', q{
	CREATE FUNCTION ignore(event es_events) RETURNS void LANGUAGE sql AS 'SELECT';
	BEGIN;
	SELECT es_register_handler('late', 'ignore(es_events)', replay_history => true);
	SELECT es_pause_handler('late');
	COMMIT;});
$node->psql('postgres', "SELECT es_archive($first_bound)", stderr => \$err);
like($err, qr/holds events that consumers have not passed.*\n.*Behind its last event in commit order: late\./,
	'refused while a consumer has not passed the range');
$node->safe_psql('postgres', q{SELECT es_unregister_handler('late')});

is($node->safe_psql('postgres', "SELECT es_archive($first_bound)"), $events_below,
	'es_archive moves the events of the partitions wholly below the position');
is( $node->safe_psql(
		'postgres', qq{
	SELECT count(*) FILTER (WHERE tablespace = 'es_archive_space'),
	       bool_and(tablespace = 'es_archive_space') FILTER (WHERE to_position <= $first_bound),
	       bool_and(tablespace = 'pg_default') FILTER (WHERE to_position > $first_bound OR is_default)
	  FROM es_partitions}),
	'3|t|t', 'the partitions below it are in the archive tablespace, the others where they were');
is($node->safe_psql('postgres', "SELECT es_archive($first_bound)"), '0', 'archiving again moves nothing');

# Every read still returns the archived events.
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*), bool_and(g.version = g.n), count(DISTINCT p.tablespace)
	  FROM (SELECT g.event_id, g.version, row_number() OVER () AS n FROM es_get_events('ACC-7') g) g
	  JOIN es_events e ON e.event_id = g.event_id JOIN es_partitions p ON p.partition = e.tableoid}),
	'100|t|2', 'es_get_events reads an aggregate across the archive and the hot partitions, in version order');
is($node->safe_psql('postgres', q{SELECT version, state ->> 'balance' FROM es_load_aggregate('ACC-7')}),
	'100|100', 'es_load_aggregate folds it across them');
is($node->safe_psql('postgres', q{SELECT count(*) FROM es_read_all(max_count => 10000)}), '5001',
	'es_read_all pages every event, archived ones included');
$node->safe_psql('postgres', q{SELECT es_rebuild_projection('es_accounts')});
wait_for(q{SELECT count(*) = 50 AND bool_and(balance = 100) FROM es_accounts}, 'a projection rebuilt from the first event reads the archive');
is($node->safe_psql('postgres', q{SELECT version FROM es_append('Account', 'ACC-7', 'ACCOUNT_BALANCE_UPDATED', '{"balance": 101}', 100)}),
	'101', 'an aggregate whose early events are archived goes on');
$node->psql('postgres', q{UPDATE es_events SET data = '{}' WHERE aggregate_id = 'ACC-1' AND version = 1}, stderr => \$err);
like($err, qr/UPDATE on es_events is not allowed/, 'the archive is append-only too');
my $archived = $node->safe_psql('postgres', q{SELECT partition FROM es_partitions WHERE tablespace = 'es_archive_space' LIMIT 1});
$node->psql('postgres', qq{DELETE FROM $archived}, stderr => \$err);
like($err, qr/DELETE on \S+ is not allowed/, 'an archived partition refuses changes');

# A dump restored into a new cluster keeps the partitions and their events.
my $dump = $PostgreSQL::Test::Utils::tmp_check . '/partitions.sql';
command_ok([ 'pg_dump', '-d', $node->connstr('postgres'), '-f', $dump ], 'pg_dump of the partitioned store');
my $fingerprint = q{SELECT count(*), md5(string_agg(event_id || version || position || coalesce(encode(hash, 'hex'), ''), ',' ORDER BY position)),
	(SELECT count(*) FROM es_partitions) FROM es_events};
my $before = $node->safe_psql('postgres', $fingerprint);
my $new = EsNode->new('partitions_restored', q{
ultracore_es.partition_events = 1000
allow_in_place_tablespaces = on
});
$new->start;
$new->safe_psql('postgres', q{CREATE TABLESPACE es_archive_space LOCATION ''});
command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $new->connstr('postgres'), '-f', $dump ],
	'restored into a new cluster');
is($new->safe_psql('postgres', $fingerprint), $before, 'every partition and event restored');
is($new->safe_psql('postgres', q{SELECT count(*) FROM es_verify()}), '0', 'the restored history verifies');
is($new->safe_psql('postgres', q{SELECT version FROM es_append('Account', 'ACC-7', 'ACCOUNT_BALANCE_UPDATED', '{}', 101)}),
	'102', 'the restored store appends');

# Dropped from the database once exported and covered by snapshots; loads
# start from the snapshots, a read of the dropped events says so.
$node->psql('postgres', "SELECT es_drop_history($first_bound)", stderr => \$err);
like($err, qr/partition \S+ of es_events is not exported/, 'the drop is refused before the export');
my $dir = $PostgreSQL::Test::Utils::tmp_check . '/exports';
mkdir $dir;
chmod 0777, $dir;
is($node->safe_psql('postgres', "SELECT (es_export(1, $first_bound, '$dir') ->> 'events')::bigint"), $events_below,
	'the archived range exported');
$node->safe_psql(
	'postgres', q{
	INSERT INTO es_dead_letters (consumer, event_id, tx_id, position, aggregate_id, event_type, status, error)
	SELECT 'see', event_id, tx_id, position, aggregate_id, event_type, 'dead', 'failed by hand'
	  FROM es_events ORDER BY position LIMIT 1});
$node->psql('postgres', "SELECT es_drop_history($first_bound)", stderr => \$err);
like($err, qr/1 dead letters not resolved hold events of partition \S+ of es_events/,
	'the drop is refused while a dead letter of an event there is not resolved');
$node->safe_psql('postgres', q{UPDATE es_dead_letters SET status = 'resolved', resolved_at = now() WHERE error = 'failed by hand'});
$node->psql('postgres', "SELECT es_drop_history($first_bound)", stderr => \$err);
like($err, qr/1 aggregates with events in partition \S+ of es_events have no snapshot at or after them\n.*For example: CUST-1\./,
	'the drop is refused while an aggregate there has no snapshot after its events');
$node->safe_psql('postgres', q{SELECT es_save_snapshot('CUST-1')});
# The export is read again, not trusted: missing or changed, it is no copy.
my $export_file = $node->safe_psql('postgres', q{SELECT file FROM es_exports ORDER BY exported_at DESC LIMIT 1});
rename($export_file, "$export_file.away") or die "rename: $!";
$node->psql('postgres', "SELECT es_drop_history($first_bound)", stderr => \$err);
like($err, qr/the export of partition \S+ of es_events is missing/, 'the drop is refused while its export file is missing');
rename("$export_file.away", $export_file) or die "rename: $!";
open(my $fh, '>>', $export_file) or die "open: $!";
print $fh "x";
close($fh);
$node->psql('postgres', "SELECT es_drop_history($first_bound)", stderr => \$err);
like($err, qr/the export of partition \S+ of es_events is not the one recorded/, 'or changed');
truncate($export_file, (-s $export_file) - 1) or die "truncate: $!";
my $before_drop = $node->safe_psql('postgres', q{SELECT count(*) FROM es_events});
is($node->safe_psql('postgres', "SELECT es_drop_history($first_bound)"), $events_below, 'es_drop_history drops them');
is( $node->safe_psql(
		'postgres', qq{
	SELECT (SELECT count(*) FROM es_events) = $before_drop - $events_below,
	       (SELECT count(*) FROM es_partitions WHERE to_position <= $first_bound),
	       (SELECT sum(events) || ' ' || count(*) || ' ' || bool_and(export_file IS NOT NULL) FROM es_dropped_history)}),
	"t|0|$events_below 3 true", 'the partitions are gone, recorded in es_dropped_history with their export');
is($node->safe_psql('postgres', q{SELECT version, state ->> 'balance' FROM es_load_aggregate('ACC-7')}),
	'101|101', 'es_load_aggregate starts from the snapshot after the dropped events');
is($node->safe_psql('postgres', q{SELECT version, state ->> 'name' FROM es_load_aggregate('CUST-1')}),
	'1|Ada', 'an aggregate whose every event was dropped loads from its snapshot');
# An append to it would take its versions again from 1 (none of its events
# is left to say its version, nor its hash to chain to): refused, whatever
# the expected version.
foreach my $expected ('0', '1', 'NULL')
{
	$node->psql('postgres', qq{SELECT es_append('Customer', 'CUST-1', 'CUSTOMER_CREATED', '{}', $expected)},
		stderr => \$err);
	like($err, qr/the events of aggregate "CUST-1" were dropped from the database/,
		"an append to it is refused (expected version $expected)");
}
is($node->safe_psql('postgres', q{SELECT count(*) FROM es_events WHERE aggregate_id = 'CUST-1'}), '0', 'nothing appended');
$node->psql('postgres', q{SELECT count(*) FROM es_get_events('ACC-7')}, stderr => \$err);
like($err, qr/events 1 to \d+ of aggregate "ACC-7" were dropped from the database/,
	'es_get_events of a dropped range says so instead of returning part of the history');
my $kept_from = $node->safe_psql('postgres', q{SELECT min(version) FROM es_events WHERE aggregate_id = 'ACC-7'});
is($node->safe_psql('postgres', qq{SELECT count(*) FROM es_get_events('ACC-7', $kept_from)}), 102 - $kept_from,
	'the events kept read from the first of them');
# A state that needs dropped events no snapshot serves is refused, not
# folded from what is left: CUST-1's snapshot does not serve a new reducer,
# and which of its events came by a point in time is not known.
$node->safe_psql(
	'postgres', q{
	CREATE FUNCTION customer_names(state jsonb, event es_events) RETURNS jsonb LANGUAGE sql IMMUTABLE
	    AS $$ SELECT state || jsonb_build_object('name', event.data->'name') $$;
	SELECT es_register_reducer('Customer', 'customer_names(jsonb, es_events)');
});
$node->psql('postgres', q{SELECT version, state FROM es_load_aggregate('CUST-1')}, stderr => \$err);
like($err, qr/the state of aggregate "CUST-1" at version 1 needs events dropped from the database/,
	'a load that no snapshot serves past the dropped events is refused');
$node->psql('postgres', q{SELECT es_save_snapshot('CUST-1')}, stderr => \$err);
like($err, qr/needs events dropped from the database/, 'and no snapshot is made from what is left');
my ($rc, $remade);
($rc, $remade, $err) = $node->psql('postgres', q{SELECT es_rebuild_snapshots('CUST-1')});
is($remade, '0', 'nor by es_rebuild_snapshots');
like($err, qr/WARNING:  1 stale snapshots were not remade: the first events of their aggregates were dropped/,
	'which says so');
$node->safe_psql('postgres', q{SELECT es_register_reducer('Customer', NULL)});
is($node->safe_psql('postgres', q{SELECT version, state ->> 'name' FROM es_load_aggregate('CUST-1')}),
	'1|Ada', 'with the reducer it was taken with, the snapshot serves again');
$node->psql('postgres', q{SELECT version FROM es_load_aggregate('CUST-1', at_time => '2000-01-01')}, stderr => \$err);
like($err, qr/Every event of it was dropped: which of them came by then is not known/,
	'a load at a time its dropped events cover is refused');
$node->psql('postgres',
	q{SELECT version FROM es_load_aggregate('ACC-7', at_time => (SELECT min(occurred_at) - interval '1 microsecond' FROM es_events WHERE aggregate_id = 'ACC-7'))},
	stderr => \$err);
like($err, qr/Its first events kept are past that time/, 'so is one before the first event kept');

# A commit-log row numbered before the drop (here by hand, as the
# sequencer would have: a dropped event, then a kept one): es_read_log, and
# the delivery units that read the log, pass over the dropped event.
$node->safe_psql(
	'postgres', q{
	INSERT INTO es_commit_log (seq, max_key, positions, committed_at)
	SELECT 1000000, max(tx_id), ARRAY[1, max(position)], now() FROM es_events WHERE aggregate_id = 'ACC-7'});
is( $node->safe_psql(
		'postgres', q{SELECT string_agg(seq || ' ' || aggregate_id || ' ' || version, ',')
	                   FROM es_read_log(999999, 0, 10)}),
	'1000000 ACC-7 ' . $node->safe_psql('postgres', q{SELECT max(version) FROM es_events WHERE aggregate_id = 'ACC-7'}),
	'es_read_log passes over an event of the log dropped since');
$node->safe_psql('postgres', q{DELETE FROM es_commit_log WHERE seq = 1000000});

my $dropped_id = $node->safe_psql('postgres', q{SELECT event_id FROM es_event_ids ORDER BY position LIMIT 1});
$node->psql('postgres', qq{SELECT es_append('Account', 'NEW-1', 'ACCOUNT_OPENED', '{}', 0, event_id => '$dropped_id')},
	stderr => \$err);
like($err, qr/event "\Q$dropped_id\E" was dropped from the database/, 'a dropped event id is not taken again');

# Appends that outran the ranges made go to the DEFAULT partition (a lock
# on it holds the worker's ATTACH off meanwhile), and the worker starts the
# next range above them while the appends go on: it reads the last position
# once it holds that partition (read before, appends of the meantime had
# rows in the new range, and its ATTACH failed at every pass for as long
# as they went on).
my $bound = $node->safe_psql('postgres', q{
	SELECT max(to_position) + 100 FROM es_partitions WHERE NOT is_default});
my $hold = $node->background_psql('postgres');
$hold->query_safe('BEGIN; LOCK TABLE es_events_overflow IN ACCESS SHARE MODE');
$node->safe_psql('postgres', "SELECT setval('es_events_position_seq', $bound)");
my $writers = EsWriters->new($node, 0)->start(25, $node, 4);
wait_for(qq{SELECT count(*) > 100 FROM es_events_overflow WHERE position > $bound},
	'appends past the ranges made go to the DEFAULT partition');
my $log_offset = -s $node->logfile;
$hold->query_safe('COMMIT');
$hold->quit;
my $released = time;
wait_for(qq{SELECT count(*) > 0 FROM es_events e JOIN es_partitions p ON p.partition = e.tableoid
             WHERE NOT p.is_default AND p.from_position > $bound},
	'the worker made a range above them, and appends go there');
cmp_ok(time - $released, '<', 15, 'while the appends went on');
unlike(slurp_file($node->logfile, $log_offset), qr/could not make the partitions/,
	'no ATTACH failed on the rows of the DEFAULT partition');
$writers->finish;
is($node->safe_psql('postgres', qq{SELECT count(*) FROM es_events_overflow o
                                   WHERE o.position >= (SELECT min(from_position) FROM es_partitions
                                                         WHERE NOT is_default AND from_position > $bound)}),
	'0', 'no row of the DEFAULT partition in a range made');

# An aggregate's later event in the DEFAULT partition, where its last one
# known lies in a range: an append there looks for it only when that
# partition may hold a position above the range's event (partitions.c),
# which the row an owner's SQL put there raises (its trigger), and which a
# restart forgets until the partition maker reads it again.
$node->safe_psql('postgres', q{
	SELECT es_append('Account', 'HINT-' || a, 'ACCOUNT_OPENED', '{}', 0) FROM generate_series(1, 2) a});
is($node->safe_psql('postgres', q{SELECT bool_and(NOT p.is_default) FROM es_events e
                                   JOIN es_partitions p ON p.partition = e.tableoid WHERE e.aggregate_id LIKE 'HINT-%'}),
	't', 'two aggregates whose first event lies in a range');
$hold = $node->background_psql('postgres');
$hold->query_safe('BEGIN; LOCK TABLE es_events_overflow IN ACCESS SHARE MODE');
$node->safe_psql('postgres', q{
	SELECT setval('es_events_position_seq', (SELECT max(to_position) + 100 FROM es_partitions WHERE NOT is_default));
	INSERT INTO es_events (event_id, event_type, aggregate_type, aggregate_id, version, tx_id, occurred_at,
	                       recorded_at, data, metadata, schema_version, appended_by)
	SELECT gen_random_uuid()::text, 'ACCOUNT_BALANCE_UPDATED', 'Account', 'HINT-' || a, 2, pg_current_xact_id(),
	       now(), now(), '{}', '{}', 1, current_user FROM generate_series(1, 2) a});
is($node->safe_psql('postgres', q{SELECT count(*) FROM es_events_overflow WHERE aggregate_id LIKE 'HINT-%'}),
	'2', 'their second events, inserted by the owner, in the DEFAULT partition');
is($node->safe_psql('postgres', q{SELECT version FROM es_append('Account', 'HINT-1', 'ACCOUNT_BALANCE_UPDATED', '{}', 2)}),
	'3', 'an append finds the later event in the DEFAULT partition');
$hold->query_safe('COMMIT');
$hold->quit;
$node->restart;
$node->safe_psql('postgres', 'SELECT es_make_partitions()');
is($node->safe_psql('postgres', q{SELECT version FROM es_append('Account', 'HINT-2', 'ACCOUNT_BALANCE_UPDATED', '{}', 2)}),
	'3', 'and after a restart, once the partition maker read that partition again');

# A store updated from 1.0, its table bounded in three steps (a CHECK, its
# validation, the table attached again below the bound), each a call of
# es_make_partitions here, with the workers off.  The bound, past int4's
# range, is read back from the CHECK; an append that took a position past
# it before the last step (the append does not check constraints) makes
# the maker start again further on, not attach the table with a row
# outside its range.
$node->safe_psql('postgres', q{ALTER SYSTEM SET ultracore_es.worker_enabled = off; SELECT pg_reload_conf()});
$node->safe_psql('postgres', 'CREATE DATABASE from_1_0');
$node->safe_psql(
	'from_1_0', q{
	CREATE EXTENSION ultracore_es VERSION '1.0';
	SELECT setval('es_events_position_seq', 3000000000);
	SELECT es_append('Account', 'OLD-' || a, 'ACCOUNT_OPENED', '{}', 0) FROM generate_series(1, 3) a;
	ALTER EXTENSION ultracore_es UPDATE});
my $bound_1_0_check = q{SELECT c.convalidated FROM pg_constraint c
                     WHERE c.conrelid = 'es_events_1_0'::regclass AND c.conname = 'es_events_1_0_bound'};
$node->safe_psql('from_1_0', 'SELECT es_make_partitions()');
is($node->safe_psql('from_1_0', $bound_1_0_check), 'f', 'step 1: the bound, not validated');
$node->safe_psql('from_1_0', 'SELECT es_make_partitions()');
is($node->safe_psql('from_1_0', $bound_1_0_check), 't', 'step 2: validated');
my $bound_1_0 = $node->safe_psql('from_1_0', q{
	SELECT (regexp_match(pg_get_constraintdef(c.oid), '(\d{10,})'))[1] FROM pg_constraint c
	 WHERE c.conrelid = 'es_events_1_0'::regclass AND c.conname = 'es_events_1_0_bound'});
cmp_ok($bound_1_0, '>', 2**31, "the bound ($bound_1_0) is past int4's range");
$node->safe_psql('from_1_0', qq{
	SELECT setval('es_events_position_seq', $bound_1_0 + 5);
	SELECT es_append('Account', 'OLD-1', 'ACCOUNT_BALANCE_UPDATED', '{}', 1)});
is($node->safe_psql('from_1_0', qq{SELECT count(*) FROM ONLY es_events_1_0 WHERE position >= $bound_1_0}),
	'1', 'an append past the bound went into the 1.0 table');
$log_offset = -s $node->logfile;
$node->safe_psql('from_1_0', 'SELECT es_make_partitions()');
is($node->safe_psql('from_1_0', $bound_1_0_check), '', 'step 3: the bound passed is dropped');
ok($node->log_contains(qr/appends reached the bound $bound_1_0 of partition es_events_1_0/, $log_offset), 'and said so');
$node->safe_psql('from_1_0', 'SELECT es_make_partitions()') for 1 .. 3;
$node->safe_psql('from_1_0', 'SELECT es_make_partitions(5000)');
is( $node->safe_psql(
		'from_1_0', q{
	SELECT p.to_position > (SELECT max(position) FROM ONLY es_events_1_0),
	       (SELECT count(*) FROM es_partitions r WHERE NOT r.is_default AND r.from_position = p.to_position)
	  FROM es_partitions p WHERE p.partition = 'es_events_1_0'::regclass}),
	't|1', 'bounded again above every row it holds, the ranges made from there');
is($node->safe_psql('from_1_0', q{SELECT version FROM es_append('Account', 'OLD-1', 'ACCOUNT_BALANCE_UPDATED', '{}', 2)}),
	'3', 'the aggregate goes on');
is($node->safe_psql('from_1_0', q{SELECT string_agg(version::text, ',' ORDER BY version) FROM es_get_events('OLD-1')}),
	'1,2,3', 'its events read in version order');

# A column added to es_events by hand: the store refuses to run rather
# than read 17 columns into arrays of 16 (memory the server did not own).
$node->safe_psql('postgres', 'CREATE DATABASE altered');
$node->safe_psql('altered', q{CREATE EXTENSION ultracore_es; ALTER TABLE es_events ADD COLUMN extra int});
$node->psql('altered', q{SELECT es_append('Account', 'ALT-1', 'ACCOUNT_OPENED', '{}', 0)}, stderr => \$err);
like($err, qr/es_events has more than its 16 columns/, 'a column added to es_events: the store refuses, clearly');
$node->psql('altered', q{SELECT count(*) FROM es_read_all()}, stderr => \$err);
like($err, qr/es_events has more than its 16 columns/, 'reads too');
is($node->safe_psql('altered', 'SELECT 1'), '1', 'the server is up');
$node->safe_psql('postgres', q{ALTER SYSTEM RESET ultracore_es.worker_enabled; SELECT pg_reload_conf()});

$new->stop;
$node->stop;
done_testing();
