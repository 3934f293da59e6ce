# What a store keeps in shared memory for its database (whether its
# DEFAULT partition es_events_overflow is known empty, partitions.c) is
# freed when the database is dropped: a server whose databases come and go
# keeps that knowledge for the ones that exist, not for the first 64 it
# saw.  And a freed slot knows nothing of the database that takes it next:
# one made from a template whose overflow partition holds an event (copied
# as files, no insert told the slot) reads that event.  A backend that
# found every slot taken looks again once one is freed: its appends into
# the overflow partition then clear the "empty" that its database's
# partition maker said in the slot the database took meanwhile.  And rows
# SQL puts there while its trigger is disabled (a data-only restore) are
# read.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/..";
use EsNode;

my $node = EsNode->new('dropped', q{ultracore_es.database = 'served'});
$node->start;

# Whether a read of an aggregate holds es_events_overflow: it leaves the
# partition alone when it is known empty (asked after a first read: a
# backend's first read locks every partition, to read their indexes).
my $overflow_locked = q{
	CREATE FUNCTION overflow_locked(aggregate text) RETURNS boolean LANGUAGE plpgsql AS $$
	BEGIN
	    PERFORM count(*) FROM es_get_events(aggregate);
	    RETURN EXISTS (SELECT FROM pg_locks
	                    WHERE pid = pg_backend_pid() AND relation = 'es_events_overflow'::regclass);
	END $$;
};
$node->safe_psql('postgres', 'CREATE DATABASE tmpl');
$node->safe_psql('tmpl', "CREATE EXTENSION ultracore_es; $overflow_locked");

# More databases than slots, none served (no partitions: an append goes to
# es_events_overflow, and takes the database's slot): the last ones find
# every slot taken.  So do the database served now, its partition maker,
# and a session of it.
for my $i (1 .. 70)
{
	$node->safe_psql('postgres', "CREATE DATABASE d$i TEMPLATE tmpl");
	$node->safe_psql("d$i", q{SELECT es_append('Account', 'A-1', 'ACCOUNT_OPENED', '{}', 0)});
}
$node->safe_psql('postgres', 'CREATE DATABASE served TEMPLATE tmpl');
my $early = $node->background_psql('served');
$early->query_safe(q{SELECT count(*) FROM es_get_events('A-1')});

# Once they are dropped, the database served takes a slot, and its
# partition maker says there that its overflow partition is empty.
$node->safe_psql('postgres', "DROP DATABASE d$_") for 1 .. 70;
ok( $node->poll_query_until(
		'served', q{SELECT count(*) FROM es_get_events('A-1'); SELECT overflow_locked('A-1')}, "0\nf"),
	'after 70 databases dropped, one that found no slot knows its overflow partition empty: reads leave it alone');

# The session from before (it found no slot then) appends past the ranges
# made, into the overflow partition (its lock holds the maker's ATTACH
# off): other sessions read that event.
$early->query_safe(q{
	BEGIN;
	LOCK TABLE es_events_overflow IN ACCESS SHARE MODE;
	SELECT setval('es_events_position_seq', (SELECT max(to_position) + 10 FROM es_partitions WHERE NOT is_default));
	SELECT es_append('Account', 'LATE-1', 'ACCOUNT_OPENED', '{}', 0);
	COMMIT});
$early->quit;
is( $node->safe_psql(
		'served', q{SELECT count(*) FROM es_events_overflow; SELECT count(*) FROM es_get_events('LATE-1')}),
	"1\n1", 'a session that found no slot tells the one taken since of its appends: they are read');
my ($ret, $out, $err) = $node->psql('served', q{SELECT es_append('Account', 'LATE-1', 'ACCOUNT_OPENED', '{}', 0)});
like($err, qr/version conflict/, 'and the version they took is known: expected version 0 conflicts');
$node->safe_psql('served', q{SELECT es_append('Account', 'A-1', 'ACCOUNT_OPENED', '{}', 0)});
is($node->safe_psql('served', q{SELECT count(*) FROM es_get_events('A-1')}), '1', 'and read its events');

# Dropped too; a database made from a template whose overflow partition
# holds an event takes the slot it had.
$node->safe_psql('postgres', 'CREATE DATABASE tmpl_rows TEMPLATE tmpl');
$node->safe_psql('tmpl_rows', q{SELECT es_append('Account', 'R-1', 'ACCOUNT_OPENED', '{}', 0)});
$node->safe_psql('postgres', 'DROP DATABASE served');
$node->safe_psql('postgres', 'CREATE DATABASE copied TEMPLATE tmpl_rows');
is($node->safe_psql('copied', q{SELECT count(*) FROM es_get_events('R-1')}),
	'1', 'a database that takes a freed slot reads the events of its overflow partition');
is($node->safe_psql('copied', q{SELECT count(*) FROM es_get_events('R-1'); SELECT overflow_locked('R-1')}),
	"1\nt", 'which its reads look in');

# Rows SQL puts into es_events_overflow tell the readers through its
# trigger: a data-only restore disables it while it loads.  The ALTER makes
# readers look there again, and the partition maker (es_make_partitions
# measures as it does) does not say the partition empty while the trigger
# does not always fire.  The aggregate's first event lies in a range, its
# second one goes into the overflow partition, past the ranges, and the
# next append into a range made above it (where no unique index would
# catch a second version 2).
my $first_event = q{
	SELECT es_make_partitions();
	SELECT es_append('Account', 'RESTORED-1', 'ACCOUNT_OPENED', '{}', 0);
};
my $restored_row = q{
	SELECT setval('es_events_position_seq', (SELECT max(to_position) + 10 FROM es_partitions WHERE NOT is_default));
	INSERT INTO es_events_overflow (event_id, event_type, aggregate_type, aggregate_id, version, tx_id,
	                                occurred_at, recorded_at, data, metadata, schema_version, appended_by)
	VALUES ('restored-2', 'ACCOUNT_BALANCE_UPDATED', 'Account', 'RESTORED-1', 2, pg_current_xact_id(),
	        now(), now(), '{}', '{}', 1, current_user);
};
my $restored_read = q{SELECT count(*) FROM es_events_overflow; SELECT count(*) FROM es_get_events('RESTORED-1')};
my $next_append = q{SELECT es_append('Account', 'RESTORED-1', 'ACCOUNT_BALANCE_UPDATED', '{}', 1)};
$node->safe_psql('postgres', 'CREATE DATABASE restore_load TEMPLATE tmpl');
$node->safe_psql('restore_load', $first_event);
is( $node->safe_psql(
		'restore_load', q{SELECT count(*) FROM es_get_events('RESTORED-1'); SELECT overflow_locked('RESTORED-1')}),
	"1\nf", 'a store whose overflow partition is measured empty: reads leave it alone');
$node->safe_psql('restore_load', "ALTER TABLE es_events_overflow DISABLE TRIGGER ALL; $restored_row
	ALTER TABLE es_events_overflow ENABLE TRIGGER ALL;");
$node->safe_psql('restore_load', 'SELECT es_make_partitions()');
is($node->safe_psql('restore_load', $restored_read), "1\n2", 'an event loaded with its triggers disabled is read');
($ret, $out, $err) = $node->psql('restore_load', $next_append);
like($err, qr/version conflict/, 'and its version is known: expected version 1 conflicts');

$node->safe_psql('postgres', 'CREATE DATABASE trigger_off TEMPLATE tmpl');
$node->safe_psql('trigger_off', $first_event);
$node->safe_psql('trigger_off', 'ALTER TABLE es_events_overflow DISABLE TRIGGER es_events_overflow_filling');
$node->safe_psql('trigger_off', 'SELECT es_make_partitions()');
is( $node->safe_psql(
		'trigger_off', q{SELECT count(*) FROM es_get_events('RESTORED-1'); SELECT overflow_locked('RESTORED-1')}),
	"1\nt", 'with the trigger off, the empty overflow partition is not said empty');
$node->safe_psql('trigger_off', $restored_row);
$node->safe_psql('trigger_off', 'SELECT es_make_partitions()');
is($node->safe_psql('trigger_off', $restored_read), "1\n2", 'and an event put there untold is read');
($ret, $out, $err) = $node->psql('trigger_off', $next_append);
like($err, qr/version conflict/, 'and its version is known');

$node->stop;
done_testing();
