# The idempotency ledger is pruned in short transactions, oldest first by
# its index on handled_at: with a million records due, no transaction of
# the prune lasts long, a commit-order reader's horizon is never held back
# by it, and the records still within the retention stay.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/..";
use EsNode;

my $node = EsNode->new('prune', q{
ultracore_es.worker_poll_interval = 100
ultracore_es.handled_retention = '1d'
});
$node->start;

$node->safe_psql(
	'postgres', q{
	CREATE EXTENSION ultracore_es;
	CREATE FUNCTION noop(event es_events) RETURNS void LANGUAGE sql AS $$ SELECT $$;
	SELECT es_register_handler('ledgered', 'noop(es_events)');
	-- What the monitor saw, once per round.
	CREATE TABLE observed (round int, prune_xact_age interval, horizon_wait interval);
	CREATE PROCEDURE watch(seconds int) LANGUAGE plpgsql AS $$
	DECLARE
	    deadline timestamptz := clock_timestamp() + make_interval(secs => seconds);
	    key xid8;
	    t0 timestamptz;
	    i int := 0;
	BEGIN
	    LOOP
	        i := i + 1;
	        -- A commit, then how long until a commit-order reader may read it.
	        PERFORM es_append('Customer', 'WATCH-' || i, 'CUSTOMER_CREATED', '{}', 0);
	        COMMIT;
	        SELECT tx_id INTO key FROM es_events WHERE aggregate_id = 'WATCH-' || i;
	        t0 := clock_timestamp();
	        WHILE es_commit_horizon() <= key LOOP
	            PERFORM pg_sleep(0.005);
	        END LOOP;
	        INSERT INTO observed
	        SELECT i, (SELECT max(clock_timestamp() - xact_start) FROM pg_stat_activity
	                    WHERE backend_type = 'ultracore_es delivery'
	                      AND query = 'ultracore_es: pruning the idempotency ledger'),
	               clock_timestamp() - t0;
	        COMMIT;
	        EXIT WHEN NOT EXISTS (SELECT FROM es_handled WHERE handled_at < now() - interval '1 day')
	               OR clock_timestamp() > deadline;
	        PERFORM pg_sleep(0.02);
	    END LOOP;
	END $$;
});

# A million records due (two days old), and a thousand still within the
# retention, written while the workers rest (their passes lock the
# consumer's row, which each foreign-key check of the bulk insert would
# then have to look past); the restarted worker prunes at its first pass.
$node->safe_psql('postgres', q{ALTER SYSTEM SET ultracore_es.worker_enabled = off; SELECT pg_reload_conf()});
$node->safe_psql(
	'postgres', q{
	INSERT INTO es_handled (consumer, event_id, position, handled_at)
	SELECT 'ledgered', 'old-' || g, g, now() - interval '2 days' - g * interval '1 ms'
	  FROM generate_series(1, 1000000) g;
	INSERT INTO es_handled (consumer, event_id, position, handled_at)
	SELECT 'ledgered', 'recent-' || g, g, now() - interval '1 hour'
	  FROM generate_series(1, 1000) g;
	ANALYZE es_handled;
	ALTER SYSTEM RESET ultracore_es.worker_enabled;
});
$node->restart;
$node->safe_psql('postgres', q{CALL watch(180)});

is($node->safe_psql('postgres', q{SELECT count(*) FROM es_handled WHERE handled_at < now() - interval '1 day'}),
	'0', 'every record past the retention is pruned');
is($node->safe_psql('postgres', q{SELECT count(*) FROM es_handled WHERE event_id LIKE 'recent-%'}),
	'1000', 'the records within the retention stay');
my ($rounds, $xact, $wait) = split /\|/, $node->safe_psql('postgres',
	q{SELECT count(*), coalesce(extract(epoch FROM max(prune_xact_age)), 0), extract(epoch FROM max(horizon_wait))
	    FROM observed});
note("$rounds rounds; longest prune transaction seen $xact s, longest wait for the horizon $wait s");
cmp_ok($rounds, '>=', 10, 'the monitor watched the prune at work');
cmp_ok($xact, '<', 1, 'no prune transaction lasts a second');
cmp_ok($wait, '<', 1, 'the horizon passes a commit within a second throughout');
like($node->safe_psql('postgres', q{EXPLAIN (COSTS OFF) SELECT ctid FROM es_handled
	WHERE handled_at < now() - interval '1 day' ORDER BY handled_at LIMIT 5000}),
	qr/Index (Only )?Scan using es_handled_handled_at/, 'the prune finds the oldest records by an index');

$node->stop;
done_testing();
