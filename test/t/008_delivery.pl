# Delivery that never stalls: a handler that sleeps 20 s on an event, and
# one blocked on a row lock, hold one delivery worker each while another
# handler of the same events and the Kafka mirror go on; a handler past its
# timeout goes to its retries and the dead letters; kill -9 of a pool
# worker in the middle of a batch, and of a split handler's worker, loses
# and repeats nothing and keeps each aggregate's order; a split handler is
# split again mid-stream; databases created after the server started are
# served, DROP EXTENSION stops a database's workers, and DROP DATABASE does
# not wait on them.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use FindBin;
use lib "$FindBin::RealBin/..";
use EsKafka;

my $kafka = EsKafka->new('es.Loan:2');
my $node = $kafka->node('delivery', q{
ultracore_es.database = ''
ultracore_es.delivery_workers = 3
ultracore_es.worker_batch_size = 20
max_worker_processes = 24
});
$node->start;

sub wait_for
{
	my ($query, $what, $db) = @_;
	ok($node->poll_query_until($db // 'postgres', $query), $what);
}

# Every event of a handler applied exactly once, in version order per
# aggregate (the effects table has no unique key: a duplicate would show).
sub check_once_in_order
{
	my ($table, $handler, $events, $what) = @_;
	wait_for("SELECT count(*) >= $events FROM $table", "$what: every event applied");
	is( $node->safe_psql(
			'postgres', qq{
		SELECT count(*) || ' ' || count(DISTINCT event_id) || ' '
		       || (SELECT count(*) FROM es_handled WHERE consumer = '$handler') FROM $table}),
		"$events $events $events", "$what: applied once each, with its ledger record");
	is( $node->safe_psql(
			'postgres', qq{
		SELECT count(*) FROM (SELECT version, lag(version) OVER (PARTITION BY aggregate_id ORDER BY seq) AS prev
		                        FROM $table) s WHERE version <> prev + 1}),
		'0', "$what: in version order per aggregate");
	return;
}

$node->safe_psql(
	'postgres', q{
	CREATE EXTENSION ultracore_es;
	CREATE TABLE got (handler text, event_id text, aggregate_id text, version bigint, at timestamptz,
	                  pid int, seq bigserial);
	CREATE FUNCTION got(handler text, event es_events) RETURNS void LANGUAGE sql AS $$
	    INSERT INTO got (handler, event_id, aggregate_id, version, at, pid)
	    VALUES (handler, event.event_id, event.aggregate_id, event.version, clock_timestamp(), pg_backend_pid())
	$$;
	CREATE FUNCTION fast(event es_events) RETURNS void LANGUAGE sql AS $$ SELECT got('fast', event) $$;
	CREATE FUNCTION slow(event es_events) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
	    IF event.data ? 'slow' THEN
	        PERFORM pg_sleep(20);
	    END IF;
	    PERFORM got('slow', event);
	END $$;
	CREATE TABLE ledger (id int PRIMARY KEY, total numeric);
	INSERT INTO ledger VALUES (1, 0);
	CREATE FUNCTION locked(event es_events) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
	    UPDATE ledger SET total = total + 1 WHERE id = 1;
	    PERFORM got('locked', event);
	END $$;
	SELECT es_register_handler('slow', 'slow(es_events)', event_types => ARRAY['LOAN_APPROVED']);
	SELECT es_register_handler('locked', 'locked(es_events)', event_types => ARRAY['LOAN_APPROVED']);
	SELECT es_register_handler('fast', 'fast(es_events)', event_types => ARRAY['LOAN_APPROVED']);
});
wait_for(q{SELECT count(*) = 3 FROM pg_stat_activity WHERE backend_type = 'ultracore_es delivery'},
	'three delivery workers');
wait_for(q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'ultracore_es kafka mirror'},
	'the Kafka mirror in a process of its own');

# One event sends the slow handler to sleep for 20 s; a session holds the
# row the locked handler must update.
my $holder = $node->background_psql('postgres');
$holder->query_safe(q{BEGIN; SELECT * FROM ledger WHERE id = 1 FOR UPDATE});
$node->safe_psql('postgres', q{SELECT es_append('Loan', 'L-SLOW', 'LOAN_APPROVED', '{"slow": true}', 0)});
wait_for(q{SELECT count(*) = 2 FROM pg_stat_activity
            WHERE backend_type = 'ultracore_es delivery'
              AND (query LIKE '%consumer slow%' OR wait_event_type = 'Lock')},
	'one worker asleep in the slow handler, one waiting on the lock');

# Meanwhile, twenty events over two seconds reach the fast handler and
# Kafka, each within three seconds of its commit.
my $t0 = time();
for my $i (1 .. 20)
{
	$node->safe_psql('postgres', "SELECT es_append('Loan', 'L-$i', 'LOAN_APPROVED', '{}', 0)");
	select(undef, undef, undef, 0.1);
}
wait_for(q{SELECT count(*) = 21 FROM got WHERE handler = 'fast'}, 'the fast handler got every event');
wait_for(q{SELECT lag_events = 0 FROM es_kafka_status WHERE component = 'mirror'}, 'the mirror sent every event');
cmp_ok(time() - $t0, '<', 10, 'while the slow handler still sleeps');
is( $node->safe_psql(
		'postgres', q{
	SELECT max(g.at - e.recorded_at) < interval '3 seconds' FROM got g JOIN es_events e USING (event_id)
	 WHERE g.handler = 'fast'}),
	't', 'the fast handler got each event within 3 s of its commit');
is($kafka->messages('es.Loan', 2), 21, 'every event on Kafka');
is($node->safe_psql('postgres', q{SELECT count(*) FROM got WHERE handler IN ('slow', 'locked')}),
	'0', 'the slow and the locked handlers have not gone past their first event');
like($node->safe_psql('postgres', q{SELECT string_agg(status || ': ' || detail, ' / ') FROM es_health()
                                     WHERE component LIKE 'worker delivery%'}),
	qr/consumer slow for/, 'es_health names the worker busy with the slow handler');

# The lock released, the slow event done: both catch up, in order.
$holder->query_safe('COMMIT');
$holder->quit;
wait_for(q{SELECT count(*) = 21 FROM got WHERE handler = 'locked'}, 'the locked handler caught up');
wait_for(q{SELECT count(*) = 21 FROM got WHERE handler = 'slow'}, 'the slow handler caught up');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FILTER (WHERE handler = 'slow' AND aggregate_id = 'L-SLOW' AND seq < (SELECT min(seq) FROM got
	                        WHERE handler = 'slow' AND aggregate_id <> 'L-SLOW'))
	  FROM got}),
	'1', 'the slow handler took its events in commit order');

# A handler past its timeout: its call is cancelled, retried after the
# backoff, then dead-lettered, the timeout in the error.
$node->safe_psql(
	'postgres', q{
	CREATE FUNCTION sleepy(event es_events) RETURNS void LANGUAGE sql AS 'SELECT pg_sleep(5)';
	SELECT es_register_handler('sleepy', 'sleepy(es_events)', event_types => ARRAY['LOAN_REJECTED'],
	                           max_retries => 2, backoff => '100 ms', timeout => '300 ms');
	SELECT es_append('Loan', 'L-SLEEPY', 'LOAN_REJECTED', '{}', 0);
});
wait_for(q{SELECT count(*) = 1 FROM es_dead_letters WHERE consumer = 'sleepy' AND status = 'dead'},
	'the handler past its timeout is dead-lettered');
is( $node->safe_psql('postgres', q{SELECT attempts || ' ' || error FROM es_dead_letters WHERE consumer = 'sleepy'}),
	'3 57014: consumer "sleepy" ran past its timeout of 300 ms', 'after an attempt and two retries, each cancelled');

# kill -9 of a delivery worker in the middle of a batch (each call takes
# 2 ms): the server restarts, nothing is lost or repeated.
$node->safe_psql(
	'postgres', q{
	CREATE TABLE applied (event_id text, aggregate_id text, version bigint, seq bigserial);
	CREATE FUNCTION record(event es_events) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
	    PERFORM pg_sleep(0.002);
	    INSERT INTO applied (event_id, aggregate_id, version) VALUES (event.event_id, event.aggregate_id, event.version);
	END $$;
	SELECT es_register_handler('record', 'record(es_events)', event_types => ARRAY['CUSTOMER_CREATED', 'CUSTOMER_UPDATED']);
	CREATE PROCEDURE append_customers(prefix text, aggregates int, events_each int) LANGUAGE plpgsql AS $$
	BEGIN
	    FOR v IN 1..events_each LOOP
	        PERFORM es_append('Customer', prefix || a, CASE WHEN v = 1 THEN 'CUSTOMER_CREATED' ELSE 'CUSTOMER_UPDATED' END,
	                          jsonb_build_object('v', v), v - 1)
	           FROM generate_series(1, aggregates) a;
	        COMMIT;
	    END LOOP;
	END $$;
	CALL append_customers('K-', 20, 50);
});
wait_for(q{SELECT count(*) > 200 FROM applied}, 'delivering');
my $victim = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'ultracore_es delivery' AND query LIKE '%consumer record%'});
ok($victim, 'a worker in the middle of a batch of record');
my $log_offset = -s $node->logfile;
kill 'KILL', $victim;
$node->wait_for_log(qr/all server processes terminated; reinitializing/, $log_offset);
check_once_in_order('applied', 'record', 1000, 'after kill -9 of a pool worker');

# A handler split into two segments: 100 aggregates, served by several
# workers at once, kill -9 of one mid-way; then split into three while
# events keep coming.
$node->safe_psql(
	'postgres', q{
	CREATE TABLE split (event_id text, aggregate_id text, version bigint, pid int, seq bigserial);
	CREATE FUNCTION split(event es_events) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
	    PERFORM pg_sleep(0.001);
	    INSERT INTO split (event_id, aggregate_id, version, pid)
	    VALUES (event.event_id, event.aggregate_id, event.version, pg_backend_pid());
	END $$;
	SELECT es_register_handler('split', 'split(es_events)', event_types => ARRAY['CUSTOMER_CREATED', 'CUSTOMER_UPDATED'],
	                           parallelism => 2);
	SELECT count(*) FROM es_consumer_segments WHERE consumer = 'split';
	CALL append_customers('S-', 100, 20);
});
wait_for(q{SELECT count(*) > 500 FROM split}, 'the split handler delivering');
cmp_ok($node->safe_psql('postgres', q{SELECT count(DISTINCT pid) FROM split}), '>=', 2,
	'its two segments served by two workers at once');
$victim = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'ultracore_es delivery' AND query LIKE '%consumer split%' LIMIT 1});
ok($victim, 'a worker in a segment of split');
$log_offset = -s $node->logfile;
kill 'KILL', $victim;
$node->wait_for_log(qr/all server processes terminated; reinitializing/, $log_offset);
check_once_in_order('split', 'split', 2000, 'two segments, after kill -9');

my $appender = $node->background_psql('postgres');
$appender->query_until(qr/started/, qq{\\echo started\nCALL append_customers('R-', 50, 20);\n\\echo done\n});
wait_for(q{SELECT count(*) > 2200 FROM split}, 'more events under way');
$node->safe_psql('postgres', q{SELECT es_register_handler('split', 'split(es_events)',
	event_types => ARRAY['CUSTOMER_CREATED', 'CUSTOMER_UPDATED'], parallelism => 3)});
$appender->query_until(qr/done/, '');
$appender->quit;
check_once_in_order('split', 'split', 3000, 'split again from two segments to three mid-stream');
is($node->safe_psql('postgres', q{SELECT segments FROM es_consumer_checkpoints WHERE consumer = 'split'}),
	'3', 'now in three segments');
wait_for(q{SELECT count(*) = 3 FROM es_consumer_segments WHERE consumer = 'split'},
	'the old segments go once the new ones passed them');

# Databases created after the server started are served.
foreach my $db ('bank2', 'bank3')
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql(
		$db, q{
		CREATE EXTENSION ultracore_es;
		CREATE TABLE seen (event_id text);
		CREATE FUNCTION seen(event es_events) RETURNS void LANGUAGE sql AS $$ INSERT INTO seen VALUES (event.event_id) $$;
		SELECT es_register_handler('seen', 'seen(es_events)');
		SELECT es_append('Customer', 'C1', 'CUSTOMER_CREATED', '{}', 0);
	});
	wait_for(q{SELECT count(*) = 1 FROM seen}, "database $db created after start is served", $db);
	wait_for("SELECT count(*) = 3 FROM pg_stat_activity WHERE backend_type = 'ultracore_es delivery' AND datname = '$db'",
		"$db has its delivery workers");
}
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'ultracore_es kafka mirror'}),
	'1', 'Kafka is served in one database only');
# Each database's statistics are its own, under the same consumer name.
wait_for(q{SELECT events_applied >= 1 FROM es_consumer_counters() WHERE consumer = 'seen'}, 'counted', 'bank3');
sleep 1;
is($node->safe_psql('bank3', q{SELECT events_applied FROM es_consumer_counters() WHERE consumer = 'seen'}),
	'1', 'a consumer\'s counters count its database\'s events only');

# A role that may not drop, rename or copy a database, nor drop the
# extension, stops none of its workers with a command that fails, whatever
# it leaves open after (a savepoint rolled back to, a transaction idle).
$node->safe_psql('postgres', q{CREATE ROLE intruder LOGIN});
my $intruder = $node->background_psql('bank3', on_error_stop => 0, extra_params => [ '-U', 'intruder' ]);
$intruder->query(q{BEGIN; SAVEPOINT s; DROP DATABASE bank3});
$intruder->query(q{ROLLBACK TO SAVEPOINT s; ALTER DATABASE bank3 RENAME TO bank9});
$intruder->query(q{ROLLBACK TO SAVEPOINT s; CREATE DATABASE copied TEMPLATE bank3});
$intruder->query(q{ROLLBACK TO SAVEPOINT s; DROP EXTENSION ultracore_es});
$intruder->query(q{ROLLBACK TO SAVEPOINT s});
sleep 2;
is( $node->safe_psql(
		'bank3', q{SELECT count(*) || ' ' || count(*) FILTER (WHERE last_exit LIKE 'asked to leave%')
	               FROM es_worker_state() WHERE kind = 'delivery' AND pid IS NOT NULL}),
	'3 0', 'failed commands of a role that may not run them stop none of the workers');
$intruder->query(q{COMMIT});
$intruder->quit;

# A DROP EXTENSION rolled back to a savepoint changes nothing: the workers
# it asked to leave come back (no failure, no backoff) and deliver.
$node->safe_psql(
	'bank3', q{
	BEGIN;
	SAVEPOINT s;
	DROP EXTENSION ultracore_es CASCADE;
	ROLLBACK TO SAVEPOINT s;
	COMMIT;
	SELECT es_append('Customer', 'C2', 'CUSTOMER_CREATED', '{}', 0);
});
wait_for(q{SELECT count(*) = 2 FROM seen}, 'a rolled-back DROP EXTENSION leaves the database served', 'bank3');
like($node->safe_psql('bank3', q{SELECT last_exit FROM es_worker_state() WHERE kind = 'delivery' AND member = 1}),
	qr/^asked to leave for DROP EXTENSION by pid \d+$/, 'the workers say why they left');

# DROP EXTENSION stops the database's workers; DROP DATABASE does not
# wait on them.
$node->safe_psql('bank3', q{DROP EXTENSION ultracore_es CASCADE});
wait_for(q{SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = 'bank3' AND backend_type LIKE 'ultracore_es%'},
	'DROP EXTENSION stopped the workers of its database');
my $t1 = time();
$node->safe_psql('postgres', q{DROP DATABASE bank2});
cmp_ok(time() - $t1, '<', 6, 'DROP DATABASE does not wait on the workers of the database');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'ultracore_es delivery'}),
	'3', 'the other database goes on');
$node->safe_psql('postgres', q{SELECT es_append('Loan', 'L-AFTER', 'LOAN_APPROVED', '{}', 0)});
wait_for(q{SELECT count(*) = 1 FROM got WHERE handler = 'fast' AND aggregate_id = 'L-AFTER'}, 'still delivering');

$node->stop;
$kafka->stop;
done_testing();
