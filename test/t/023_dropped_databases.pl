# What a store keeps in shared memory for its database (whether its
# DEFAULT partition es_events_overflow is known empty, partitions.c) is
# freed when the database is dropped: a server whose databases come and go
# keeps that knowledge for the ones that exist, not for the first 64 it
# saw.  And a freed slot knows nothing of the database that takes it next:
# one made from a template whose overflow partition holds an event (copied
# as files, no insert told the slot) reads that event.  A backend that
# found every slot taken looks again once one is freed: its appends into
# the overflow partition then clear the "empty" that its database's
# partition maker said in the slot the database took meanwhile.
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

$node->stop;
done_testing();
