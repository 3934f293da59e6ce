# The background worker and its handlers, across the failures a server
# meets: the worker starts and shows itself, reloads its settings on SIGHUP,
# exits on SIGTERM and comes back, and survives kill -9 of itself and of a
# backend (both restart the whole server) without losing an event or
# handling one twice.  Handlers that fail for a while are retried with
# backoff; one that keeps failing is dead-lettered, fixed and retried; a
# transaction that commits after later ones is still handled, once.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/..";
use EsNode;

my $node = EsNode->new('worker', q{
ultracore_es.worker_batch_size = 50
});
$node->start;

sub worker_pid
{
	return $node->safe_psql('postgres',
		q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'ultracore_es delivery' ORDER BY pid LIMIT 1});
}

sub wait_for
{
	my ($query, $what) = @_;
	ok($node->poll_query_until('postgres', $query), $what);
}

# Every delivery worker has looked twice more than when called: what an
# absence check waits for, so that it fails with a dead or stuck worker.
sub delivery_passed
{
	my ($what) = @_;
	my %before = map { my ($m, $pid, $passes) = split /:/; ($m => [ $pid, $passes ]) } split /,/,
	  $node->safe_psql('postgres',
		q{SELECT string_agg(member || ':' || pid || ':' || passes, ',') FROM es_worker_state() WHERE kind = 'delivery'});
	# (a worker started again since is a new process: it looked after the call)
	my $passed = join(' AND ',
		map {
			"(SELECT passes >= $before{$_}[1] + 2 OR pid <> $before{$_}[0] FROM es_worker_state()"
			  . " WHERE kind = 'delivery' AND member = $_)"
		} sort keys %before);
	ok(%before && $node->poll_query_until('postgres', "SELECT $passed"), "$what: the delivery workers looked since");
	return;
}

# The effects table has no unique key: a duplicate delivery would show as a
# second row.  The handler is slow enough that a kill lands mid-batch.
$node->safe_psql(
	'postgres', q{
	CREATE EXTENSION ultracore_es;
	CREATE TABLE applied (event_id text, aggregate_id text, version bigint, seq bigserial);
	CREATE FUNCTION record(event es_events) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
	    IF event.aggregate_type = 'Customer' THEN
	        PERFORM pg_sleep(0.002);
	    END IF;
	    IF event.aggregate_id LIKE 'KILLW-%' THEN
	        PERFORM pg_advisory_xact_lock_shared(3);  -- the test holds it to stop delivery mid-batch
	    END IF;
	    INSERT INTO applied (event_id, aggregate_id, version)
	    VALUES (event.event_id, event.aggregate_id, event.version);
	END $$;
	SELECT es_register_handler('record', 'record(es_events)', event_types => ARRAY['CUSTOMER_CREATED', 'CUSTOMER_UPDATED']);
	CREATE PROCEDURE append_customers(prefix text, aggregates int, events_each int) LANGUAGE plpgsql AS $$
	BEGIN
	    FOR v IN 1..events_each LOOP
	        FOR a IN 1..aggregates LOOP
	            PERFORM es_append('Customer', prefix || a,
	                              CASE WHEN v = 1 THEN 'CUSTOMER_CREATED' ELSE 'CUSTOMER_UPDATED' END,
	                              jsonb_build_object('v', v), v - 1);
	        END LOOP;
	        COMMIT;
	    END LOOP;
	END $$;
});

# Every committed event of the handler's types applied exactly once, each
# aggregate's events in version order, with one ledger record each.
sub check_exactly_once
{
	my ($what) = @_;
	my $expected = $node->safe_psql('postgres',
		q{SELECT count(*) FROM es_events WHERE event_type IN ('CUSTOMER_CREATED', 'CUSTOMER_UPDATED')});
	wait_for("SELECT count(*) >= $expected FROM applied", "$what: every event applied");
	is( $node->safe_psql(
			'postgres', q{
		SELECT count(*) || ' ' || count(DISTINCT event_id) || ' '
		       || (SELECT count(*) FROM es_handled WHERE consumer = 'record') FROM applied}),
		"$expected $expected $expected",
		"$what: applied once each, each with its idempotency record");
	is( $node->safe_psql(
			'postgres', q{
		SELECT count(*) FROM (SELECT version, lag(version) OVER (PARTITION BY aggregate_id ORDER BY seq) AS prev
		                        FROM applied) s WHERE version <> prev + 1}),
		'0', "$what: in version order");
}

# The worker starts and shows what it does.
wait_for(q{SELECT count(*) = 2 FROM pg_stat_activity
            WHERE backend_type = 'ultracore_es delivery' AND datname = 'postgres'}, 'delivery workers running');
$node->safe_psql('postgres', q{CALL append_customers('START-', 5, 4)});
check_exactly_once('first delivery');

# SIGHUP: worker_enabled off stops delivery, on resumes it.
my $log_offset = -s $node->logfile;
$node->safe_psql('postgres', q{ALTER SYSTEM SET ultracore_es.worker_enabled = off; SELECT pg_reload_conf()});
$node->wait_for_log(qr/ultracore_es delivery stops in database "postgres"/, $log_offset);
$node->safe_psql('postgres', q{CALL append_customers('HUP-', 1, 1)});
delivery_passed('disabled');
is($node->safe_psql('postgres', q{SELECT count(*) FROM applied WHERE aggregate_id = 'HUP-1'}),
	'0', 'nothing delivered while disabled');
$node->safe_psql('postgres', q{ALTER SYSTEM RESET ultracore_es.worker_enabled; SELECT pg_reload_conf()});
wait_for(q{SELECT count(*) = 1 FROM applied WHERE aggregate_id = 'HUP-1'}, 'delivered once re-enabled');

# SIGTERM: the worker exits cleanly (no crash restart) and is started again.
my $pid = worker_pid();
$log_offset = -s $node->logfile;
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
wait_for(
	qq{SELECT count(*) = 2 FROM pg_stat_activity WHERE backend_type = 'ultracore_es delivery' AND pid <> $pid},
	'worker started again after SIGTERM');
ok(!$node->log_contains(qr/terminating any other active server processes/, $log_offset),
	'SIGTERM is not a crash');

# kill -9 of the worker while it delivers: the server restarts, the worker
# resumes from its committed checkpoint.
$node->safe_psql('postgres', q{CALL append_customers('KILLW-', 20, 50)});
wait_for(q{SELECT count(*) > 200 FROM applied WHERE aggregate_id LIKE 'KILLW-%'}, 'worker delivering');
my $gate = $node->background_psql('postgres');
$gate->query_safe('SELECT pg_advisory_lock(3)');
wait_for(q{SELECT count(*) = 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = 3 AND NOT granted},
	'the worker stopped mid-batch at the gate');
$pid = $node->safe_psql('postgres', q{SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = 3 AND NOT granted});
my $delivered = $node->safe_psql('postgres', q{SELECT count(*) FROM applied WHERE aggregate_id LIKE 'KILLW-%'});
$log_offset = -s $node->logfile;
kill 'KILL', $pid;
$node->wait_for_log(qr/all server processes terminated; reinitializing/, $log_offset);
eval { $gate->quit };
wait_for('SELECT true', 'server back after the worker was killed');
cmp_ok($delivered, '<', 1000, 'the kill interrupted delivery');
check_exactly_once('after kill -9 of the worker');

# kill -9 of a backend (a crash of the whole server) while the worker
# delivers and another transaction has appended without committing.
$node->safe_psql('postgres', q{CALL append_customers('KILLB-', 20, 50)});
my $open = $node->background_psql('postgres');
my $open_pid = $open->query_safe(
	q{BEGIN; SELECT es_append('Customer', 'UNCOMMITTED', 'CUSTOMER_CREATED', '{}', 0); SELECT pg_backend_pid()});
$open_pid = (split /\n/, $open_pid)[-1];
wait_for(q{SELECT count(*) > 200 FROM applied WHERE aggregate_id LIKE 'KILLB-%'}, 'worker delivering again');
$log_offset = -s $node->logfile;
kill 'KILL', $open_pid;
$node->wait_for_log(qr/all server processes terminated; reinitializing/, $log_offset);
wait_for('SELECT true', 'server back after the backend was killed');
eval { $open->quit };
check_exactly_once('after kill -9 of a backend');
is($node->safe_psql('postgres', q{SELECT count(*) FROM es_events WHERE aggregate_id = 'UNCOMMITTED'}),
	'0', 'the uncommitted append is gone, and was never delivered');

# A transaction that appends, waits, and commits after later ones.  Readers
# stop below the oldest running transaction (DESIGN.md, decision 1), so the
# later commits wait for it; once it commits, its event is delivered once,
# in its place, before theirs.
my $late = $node->background_psql('postgres');
$late->query_safe(q{BEGIN; SELECT es_append('Customer', 'LATE', 'CUSTOMER_CREATED', '{}', 0)});
$node->safe_psql('postgres', q{CALL append_customers('AFTER-', 3, 2)});
delivery_passed('an open transaction');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) || ' ' || (SELECT lag_events >= 6 FROM es_stats WHERE consumer = 'record')
	  FROM applied WHERE aggregate_id = 'LATE' OR aggregate_id LIKE 'AFTER-%'}),
	'0 true', 'later commits wait for the open transaction, and show as lag');
$late->query_safe('COMMIT');
$late->quit;
wait_for(q{SELECT count(*) = 7 FROM applied WHERE aggregate_id = 'LATE' OR aggregate_id LIKE 'AFTER-%'},
	'the late commit and the later ones are delivered');
is( $node->safe_psql(
		'postgres', q{
	SELECT (SELECT seq FROM applied WHERE aggregate_id = 'LATE')
	       < (SELECT min(seq) FROM applied WHERE aggregate_id LIKE 'AFTER-%')}),
	't', 'the late event in its place in commit order');
check_exactly_once('after a late commit');

# A handler that fails twice, then succeeds: applied once, after its backoff.
$node->safe_psql(
	'postgres', q{
	CREATE SEQUENCE calls;
	CREATE TABLE flaky_applied (event_id text, call bigint, at timestamptz);
	CREATE FUNCTION flaky(event es_events) RETURNS void LANGUAGE plpgsql AS $$
	DECLARE
	    n bigint := nextval('calls');
	BEGIN
	    IF n <= 2 OR event.data ? 'poison' THEN
	        RAISE EXCEPTION 'failure on call %', n;
	    END IF;
	    INSERT INTO flaky_applied VALUES (event.event_id, n, clock_timestamp());
	END $$;
	SELECT es_register_handler('flaky', 'flaky(es_events)', event_types => ARRAY['LOAN_APPROVED'],
	                           max_retries => 3, backoff => '300 ms');
});
my $appended_at = $node->safe_psql('postgres',
	q{SELECT clock_timestamp(); SELECT es_append('Loan', 'L1', 'LOAN_APPROVED', '{}', 0)});
$appended_at = (split /\n/, $appended_at)[0];
wait_for(q{SELECT count(*) = 1 FROM flaky_applied}, 'flaky handler applied the event');
is( $node->safe_psql(
		'postgres',
		"SELECT call || ' ' || (at - '$appended_at'::timestamptz >= interval '900 ms') FROM flaky_applied"),
	'3 true', 'applied on the third call, after 300 ms + 600 ms of backoff');
is($node->safe_psql('postgres', q{SELECT count(*) FROM es_dead_letters}), '0', 'no dead letter');

# One that always fails: dead-lettered after its retries, then fixed and
# retried from the dead-letter table.
$node->safe_psql('postgres', q{SELECT es_append('Loan', 'L2', 'LOAN_APPROVED', '{"poison": true}', 0)});
wait_for(q{SELECT count(*) = 1 FROM es_dead_letter_queue WHERE status = 'dead' AND aggregate_id = 'L2'},
	'poison event dead-lettered');
is( $node->safe_psql('postgres',
		q{SELECT attempts || ' ' || (first_failed_at < last_failed_at) FROM es_dead_letters WHERE aggregate_id = 'L2'}),
	'4 true', 'after one attempt and three retries');
$node->safe_psql(
	'postgres', q{
	CREATE OR REPLACE FUNCTION flaky(event es_events) RETURNS void LANGUAGE sql AS $$
	    INSERT INTO flaky_applied VALUES (event.event_id, nextval('calls'), clock_timestamp())
	$$;
	SELECT es_retry_dead_letters('flaky');
});
wait_for(q{SELECT count(*) = 1 FROM flaky_applied f JOIN es_events e USING (event_id) WHERE e.aggregate_id = 'L2'},
	'the fixed handler applied the dead letter');
is($node->safe_psql('postgres', q{SELECT status FROM es_dead_letters WHERE aggregate_id = 'L2'}),
	'resolved', 'the dead letter is resolved');
is($node->safe_psql('postgres', q{SELECT count(*) FROM flaky_applied}), '2', 'each event applied once');

$node->stop;
done_testing();
