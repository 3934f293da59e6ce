# The extension works when it is only created, without shared_preload_libraries:
# the library is then loaded by the first call in each backend.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('no_preload');
$node->init;
$node->start;

is($node->safe_psql('postgres', 'SHOW shared_preload_libraries'), '', 'library not preloaded');
$node->safe_psql('postgres', 'CREATE EXTENSION ultracore_es');

is( $node->safe_psql(
		'postgres', q{
	SELECT version FROM es_append('Customer', 'CUST001', 'CUSTOMER_CREATED', '{"name": "John"}', 0);
	SELECT version FROM es_append('Customer', 'CUST001', 'CUSTOMER_UPDATED', '{"email": "j@x"}', 1);
	SELECT string_agg(event_type, ',' ORDER BY version) FROM es_get_events('CUST001');
	}),
	"1\n2\nCUSTOMER_CREATED,CUSTOMER_UPDATED",
	'append and read back without preloading');

# A fresh backend loads the library on its first call, settings included.
is($node->safe_psql('postgres', q{SELECT count(*) FROM es_read_all()}), '2', 'commit-order read');
is($node->safe_psql('postgres', q{SELECT es_aggregate_version('CUST001'); SHOW ultracore_es.max_event_bytes}),
	"2\n1MB", 'settings defined once loaded');

my ($ret, $stdout, $stderr) = $node->psql('postgres',
	q{SELECT es_append('Customer', 'CUST001', 'CUSTOMER_UPDATED', '{}', 1)});
isnt($ret, 0, 'conflict is an error');
like($stderr, qr/version conflict on aggregate "CUST001"/, 'conflict reported');

# Without the worker: handlers can be registered (they wait for a server
# with the library preloaded), and the monitoring views say there is none.
is( $node->safe_psql(
		'postgres', q{
	CREATE FUNCTION ignore(event es_events) RETURNS void LANGUAGE sql AS 'SELECT';
	SELECT es_register_handler('waiting', 'ignore(es_events)');
	SELECT (worker_pid IS NULL) || ' ' || (events_appended IS NULL) FROM es_store_stats;
	SELECT consumer || ' ' || events_processed FROM es_stats}),
	"\ntrue true\nwaiting 0",
	'no worker, no counters, the handler waits');

$node->stop;
done_testing();
