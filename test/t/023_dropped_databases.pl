# What a store keeps in shared memory for its database (whether its
# DEFAULT partition es_events_overflow is known empty, partitions.c) is
# freed when the database is dropped: a server whose databases come and go
# keeps that knowledge for the ones that exist, not for the first 64 it
# saw.  And a freed slot knows nothing of the database that takes it next:
# one made from a template whose overflow partition holds an event (copied
# as files, no insert told the slot) reads that event.
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
# es_events_overflow, and takes the database's slot), each dropped.
for my $i (1 .. 70)
{
	$node->safe_psql('postgres', "CREATE DATABASE d$i TEMPLATE tmpl");
	$node->safe_psql("d$i", q{SELECT es_append('Account', 'A-1', 'ACCOUNT_OPENED', '{}', 0)});
	$node->safe_psql('postgres', "DROP DATABASE d$i");
}

# A database served now: its partition maker finds the overflow partition
# empty, and says so in its slot.
$node->safe_psql('postgres', 'CREATE DATABASE served TEMPLATE tmpl');
ok( $node->poll_query_until(
		'served', q{SELECT count(*) FROM es_get_events('A-1'); SELECT overflow_locked('A-1')}, "0\nf"),
	'after 70 databases dropped, a new one knows its overflow partition empty: reads leave it alone');
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
