# A server killed during the rebuild of an async projection: the rebuild,
# one transaction, leaves nothing half done (the rows are as before it),
# the worker goes on projecting new events, and the rebuild run again gives
# exactly the rows the events call for.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/..";
use EsNode;

my $node = EsNode->new('projection_rebuild');
$node->start;

# A slow projection (a millisecond per event), so that the kill lands mid-rebuild.
$node->safe_psql(
	'postgres', q{
	CREATE EXTENSION ultracore_es;
	CREATE TABLE totals (account_id text PRIMARY KEY, total numeric NOT NULL, events int NOT NULL);
	CREATE FUNCTION project_total(event es_events) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
	    PERFORM pg_sleep(0.001);
	    INSERT INTO totals VALUES (event.aggregate_id, (event.data->>'amount')::numeric, 1)
	    ON CONFLICT (account_id) DO UPDATE SET total = totals.total + excluded.total, events = totals.events + 1;
	END $$;
	CREATE FUNCTION reset_totals(aggregate_id text) RETURNS void LANGUAGE sql AS
	    'DELETE FROM totals WHERE $1 IS NULL OR account_id = $1';
	DO $$
	BEGIN
	    FOR v IN 1..100 LOOP
	        PERFORM es_append('Account', 'ACC-' || a, 'ACCOUNT_BALANCE_UPDATED',
	                          jsonb_build_object('amount', (a * v) || '.01'))
	           FROM generate_series(1, 30) a;
	        COMMIT;
	    END LOOP;
	END $$;
	SELECT es_register_projection('totals', 'project_total(es_events)', ARRAY['ACCOUNT_BALANCE_UPDATED'],
	                              reset_function => 'reset_totals(text)');
});

my $expected = q{SELECT count(*) FROM (
	(SELECT aggregate_id, sum((data->>'amount')::numeric), count(*)::int FROM es_events GROUP BY 1
	 EXCEPT SELECT account_id, total, events FROM totals)
	UNION ALL
	(SELECT account_id, total, events FROM totals
	 EXCEPT SELECT aggregate_id, sum((data->>'amount')::numeric), count(*)::int FROM es_events GROUP BY 1)) d};

my $last = $node->safe_psql('postgres', 'SELECT max(position) FROM es_events');
is($node->safe_psql('postgres', "SELECT es_wait_for_projection('totals', $last, '120 s')"),
	't', 'the worker projected the 3,000 events');
is($node->safe_psql('postgres', $expected), '0', 'rows as the events call for');

# Damage the rows, then kill the server while a rebuild repairs them.
$node->safe_psql('postgres', 'UPDATE totals SET total = -1');
my $rebuild = $node->background_psql('postgres', on_error_stop => 0);
my $pid = $rebuild->query_safe('SELECT pg_backend_pid()');
$rebuild->query_until(qr/started/, q{\echo started
SELECT es_rebuild_projection('totals');
});
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = $pid AND query LIKE '%es_rebuild_projection%'"),
	'the rebuild is running');
sleep(1);
my $log_offset = -s $node->logfile;
kill 'KILL', $pid;
$node->wait_for_log(qr/all server processes terminated; reinitializing/, $log_offset);
ok($node->poll_query_until('postgres', 'SELECT true'), 'server back after the kill');
eval { $rebuild->quit };

is($node->safe_psql('postgres', q{SELECT count(*) || ' ' || bool_and(total = -1) FROM totals}),
	'30 true', 'nothing of the killed rebuild remains');
is($node->safe_psql('postgres', q{SELECT last_rebuild_events IS NULL FROM es_projection_status WHERE name = 'totals'}),
	't', 'and it was not recorded');

# The worker goes on: a new event is projected onto the (damaged) row.
$last = $node->safe_psql('postgres',
	q{SELECT position FROM es_append('Account', 'ACC-1', 'ACCOUNT_BALANCE_UPDATED', '{"amount": "1000"}')});
is($node->safe_psql('postgres', "SELECT es_wait_for_projection('totals', $last, '60 s')"),
	't', 'the worker projects new events after the crash');
is($node->safe_psql('postgres', q{SELECT total FROM totals WHERE account_id = 'ACC-1'}), '999', 'onto the row as it was');

# The rebuild run to its end repairs every row, once.
is($node->safe_psql('postgres', q{SELECT es_rebuild_projection('totals')}), '3001', 'rebuild replays every event');
is($node->safe_psql('postgres', $expected), '0', 'rows as the events call for again');
$last = $node->safe_psql('postgres',
	q{SELECT position FROM es_append('Account', 'ACC-2', 'ACCOUNT_BALANCE_UPDATED', '{"amount": "1"}')});
is($node->safe_psql('postgres', "SELECT es_wait_for_projection('totals', $last, '60 s')"),
	't', 'and the worker goes on from the rebuild');
is($node->safe_psql('postgres', $expected), '0', 'no event applied twice after the rebuild');

$node->stop;
done_testing();
