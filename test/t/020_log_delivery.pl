# Units of delivery in the commit log (commit_point.c), with wal_level =
# logical: a handler, a handler split in three segments, an async
# projection and the Kafka mirror read the log while it is live.  An
# appender left open 10 s delays none of them; the log switched off and on
# again under six writers (random 0-1 s transactions, a fifth rolled back)
# moves every unit to the horizon and back, and each one still gets every
# committed event once (the mirror has no ledger: Kafka shows a repeat);
# the split handler split again under load; the slot dropped by hand, they
# fall back, then read the new slot's log; the unsplit handler split while
# it reads the log past an open appender delivers nothing twice; rebuilds
# of async projections past an open appender lose nothing.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use FindBin;
use lib "$FindBin::RealBin/..";
use EsNode;
use EsKafka;
use EsWriters;
use IPC::Run;

my $kafka = EsKafka->new('es.Customer:2');
my $node = $kafka->node('log_delivery', q{
wal_level = logical
ultracore_es.commit_log = on
ultracore_es.worker_poll_interval = 100
ultracore_es.kafka_batch_size = 50
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
	CREATE TABLE got (unit text, event_id text, at timestamptz DEFAULT clock_timestamp());
	CREATE FUNCTION got(event es_events) RETURNS void LANGUAGE sql AS $$
	    INSERT INTO got (unit, event_id) VALUES ('handler', event.event_id)
	$$;
	CREATE FUNCTION got_split(event es_events) RETURNS void LANGUAGE sql AS $$
	    INSERT INTO got (unit, event_id) VALUES ('split handler', event.event_id)
	$$;
	CREATE FUNCTION projected(event es_events) RETURNS void LANGUAGE sql AS $$
	    INSERT INTO got (unit, event_id) VALUES ('async projection', event.event_id)
	$$;
	SELECT es_register_handler('got', 'got(es_events)');
	SELECT es_register_handler('got_split', 'got_split(es_events)', parallelism => 3);
	SELECT es_register_projection('projected', 'projected(es_events)');
	SELECT es_append('Customer', 'BEFORE-' || g, 'CUSTOMER_CREATED', '{}', 0) FROM generate_series(1, 20) g;
});

# Every unit: the two unsplit consumers, the mirror, three segments.
my $units_in_log = q{SELECT count(*) FROM (
	SELECT log_seq FROM es_consumers c
	 WHERE NOT EXISTS (SELECT FROM es_consumer_segments s WHERE s.consumer = c.name AND s.generation = c.generation)
	UNION ALL
	SELECT s.log_seq FROM es_consumer_segments s JOIN es_consumers c ON c.name = s.consumer AND c.generation = s.generation) u
	 WHERE log_seq IS NOT NULL};
wait_for("SELECT ($units_in_log) = 6", 'every unit of delivery reads the commit log');
like($node->safe_psql('postgres', q{SELECT detail FROM es_health() WHERE component = 'commit log'}),
	qr/; 6 of 6 delivery units read it$/, 'es_health says so');

# Whether a unit has the event of an aggregate.  The mirror has it once its
# checkpoint passes it: below its horizon checkpoint, or in the log up to
# where it is.
my %has = map { my $u = $_; ($u => qq{SELECT count(*) FROM got g JOIN es_events e USING (event_id)
	                                   WHERE g.unit = '$u' AND e.aggregate_id = '%s'}) }
  ('handler', 'split handler', 'async projection');
$has{'Kafka mirror'} = q{SELECT count(*) FROM es_consumers c, es_events e
	WHERE c.name = 'kafka_mirror' AND e.aggregate_id = '%s'
	  AND ((e.tx_id, e.position) <= (c.checkpoint_tx, c.checkpoint_position)
	       OR EXISTS (SELECT FROM es_commit_log l
	                   WHERE l.seq <= c.log_seq AND e.position = ANY (l.positions)
	                     AND (l.seq < c.log_seq OR e.position <= c.log_position)))};

# An appender left open 10 s: the events committed after it reach every unit
# within 2 s; its own, once it commits.
my $slow = $node->background_psql('postgres');
$slow->query_safe(q{BEGIN; SELECT es_append('Customer', 'SLOW', 'CUSTOMER_CREATED', '{}', 0)});
my %worst = map { $_ => 0 } keys %has;
my $t0 = time;
my $i = 0;
while (time - $t0 < 10)
{
	$i++;
	my $committed = time;
	$node->safe_psql('postgres', qq{SELECT es_append('Customer', 'OPEN-$i', 'CUSTOMER_CREATED', '{}', 0)});
	my %at;
	while (keys %at < keys %has && time - $committed < 10)
	{
		foreach my $unit (grep { !defined $at{$_} } keys %has)
		{
			$at{$unit} = time if $node->safe_psql('postgres', sprintf($has{$unit}, "OPEN-$i")) eq '1';
		}
		usleep(20_000);
	}
	foreach my $unit (keys %has)
	{
		my $took = ($at{$unit} // 1e9) - $committed;
		$worst{$unit} = $took if $took > $worst{$unit};
	}
	usleep(800_000);
}
is($node->safe_psql('postgres', q{SELECT count(*) FROM es_horizon_holders()}),
	'1', 'the appender held the commit horizon all along');
foreach my $unit (sort keys %has)
{
	cmp_ok($worst{$unit}, '<', 2,
		sprintf('%s had each event within 2 s of its commit past an open appender (worst %.3f s)',
			$unit, $worst{$unit}));
}
$slow->query_safe('COMMIT');
$slow->quit;
foreach my $unit (sort keys %has)
{
	wait_for(sprintf("SELECT (%s) = 1", sprintf($has{$unit}, 'SLOW')), "$unit: the appender's event, once it committed");
}

# Six writers, random transactions of 0-1 s, a fifth of them rolled back.
my $writers = EsWriters->new($node, 1000);
sub writers { return $writers->start($_[0]); }

# Every committed event exactly once at every unit, in Kafka too, and no
# rolled-back one.
sub check_units
{
	my ($what) = @_;
	my $events = $node->safe_psql('postgres', 'SELECT count(*) FROM es_events');
	foreach my $unit ('handler', 'split handler', 'async projection')
	{
		wait_for(qq{SELECT count(*) = $events FROM got WHERE unit = '$unit'}, "$what: the $unit caught up");
		is( $node->safe_psql(
				'postgres', qq{SELECT count(DISTINCT event_id) || ' ' || count(*) FROM got WHERE unit = '$unit'}),
			"$events $events", "$what: the $unit had every event once");
	}
	wait_for(q{SELECT lag_events = 0 FROM es_kafka_status WHERE component = 'mirror'}, "$what: the mirror caught up");
	my @messages = $kafka->consume('es.Customer');
	my $distinct = eval { EsKafka::check_order(@messages) };
	is($@, '', "$what: Kafka has each aggregate's events in order");
	is(scalar(@messages) . ' ' . ($distinct // 'none'), "$events $events",
		"$what: Kafka has every event once ($events)");
	is($node->safe_psql('postgres', q{SELECT count(*) FROM es_events WHERE data->>'r' = '1'}),
		'0', "$what: no rolled-back append exists");
	return;
}

# The log switched off and on again under load: every unit falls back to
# the horizon (each with the events it read in the log above its checkpoint
# as a skip set), says so in the server log, and goes back into the log.
my $log_offset = -s $node->logfile;
my $load = writers(14);
sleep 3;
$node->safe_psql('postgres', q{ALTER SYSTEM SET ultracore_es.commit_log = off; SELECT pg_reload_conf()});
wait_for("SELECT ($units_in_log) = 0", 'the log switched off: every unit reads below the horizon');
like(slurp_file($node->logfile, $log_offset),
	qr/"kafka_mirror" falls back to reading below the commit horizon\n.*DETAIL:  The commit log is switched off/,
	'the server log says why a unit fell back');
sleep 3;
$node->safe_psql('postgres', q{ALTER SYSTEM SET ultracore_es.commit_log = on; SELECT pg_reload_conf()});
wait_for("SELECT ($units_in_log) = 6", 'the log on again: every unit reads it again');
$load->finish;
check_units('the log off and on under load');

# The split handler split again, from three segments to two, under load
# while its units read the log: they leave the log first (their skip sets
# go to the fences), the new ones start below the horizon and go into the
# log at their first batch; every event once.
$load = writers(8);
sleep 2;
$node->safe_psql('postgres', q{SELECT es_register_handler('got_split', 'got_split(es_events)', parallelism => 2)});
$load->finish;
wait_for("SELECT ($units_in_log) = 5", 'the two new segments read the log too');
check_units('the split handler split again under load');

# The slot dropped by hand under load: the sequencer's state goes back to
# "no tail", the units fall back to the horizon and say so, then read the
# log of the new slot, whose tail numbers what the old one missed.
$log_offset = -s $node->logfile;
$load = writers(10);
sleep 2;
my $slot = $node->safe_psql('postgres', q{SELECT slot_name FROM pg_replication_slots WHERE plugin = 'ultracore_es'});
my $dropped = 0;
for (1 .. 100)
{
	# The sequencer holds the slot: end it, and drop the slot before it is back.
	$node->safe_psql('postgres',
		q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'ultracore_es sequencer'});
	my ($rc) = $node->psql('postgres', qq{SELECT pg_drop_replication_slot('$slot')});
	if ($rc == 0) { $dropped = 1; last; }
	usleep(20_000);
}
ok($dropped, 'the slot was dropped by hand');
wait_for(q{SELECT tail_snapshot IS NOT NULL AND slot_created_at > now() - interval '1 minute' FROM es_commit_log_state},
	'the sequencer made the slot again, with a tail');
$load->finish;
wait_for("SELECT ($units_in_log) = 5", 'every unit reads the new slot\'s log');
check_units('the slot dropped by hand under load');
like(slurp_file($node->logfile, $log_offset),
	qr/falls back to reading below the commit horizon\n.*DETAIL:  The commit log's slot is being made again/,
	'the server log says the units fell back while the slot was made again');

# The unsplit handler split in two while it reads the log, past an open
# appender: the events it handled above its checkpoint (its skip set) are
# not delivered again by the new segments, even with its idempotency
# records gone (as ultracore_es.handled_retention prunes them).
$slow = $node->background_psql('postgres');
$slow->query_safe(q{BEGIN; SELECT es_append('Customer', 'SLOW-2', 'CUSTOMER_CREATED', '{}', 0)});
$node->safe_psql('postgres',
	q{SELECT es_append('Customer', 'ABOVE-' || g, 'CUSTOMER_CREATED', '{}', 0) FROM generate_series(1, 50) g});
wait_for(q{SELECT count(*) = 50 FROM got g JOIN es_events e USING (event_id)
            WHERE g.unit = 'handler' AND e.aggregate_id LIKE 'ABOVE-%'},
	'the unsplit handler had the events committed past the open appender');
is($node->safe_psql('postgres', q{SELECT log_seq IS NOT NULL FROM es_consumers WHERE name = 'got'}),
	't', 'the unsplit handler read them in the log, above its checkpoint');
$node->safe_psql('postgres', q{DELETE FROM es_handled WHERE consumer = 'got'});
$node->safe_psql('postgres', q{SELECT es_register_handler('got', 'got(es_events)', parallelism => 2)});
is($node->safe_psql('postgres', q{SELECT count(*) FROM es_consumer_segments WHERE consumer = 'got' AND segments = 1}),
	'1', 'its skip set is kept as a fence of one segment');
$slow->query_safe('COMMIT');
$slow->quit;
check_units('the unsplit handler split in two past an open appender');
wait_for(q{SELECT count(*) = 0 FROM es_consumer_segments WHERE consumer = 'got' AND segments = 1},
	'the fence goes once both segments passed it');

# Rebuilds of async projections while they read the log past an open
# appender: what the worker applied above its checkpoint is not lost.  One
# aggregate: every event of it is replayed (a read model's version, or the
# ledger, keeps the worker from applying them twice).  Every aggregate: the
# worker applies again what is above the new checkpoint, its ledger gone.
$node->safe_psql(
	'postgres', q{
	CREATE TABLE totals (aggregate_id text PRIMARY KEY, total numeric NOT NULL);
	CREATE FUNCTION add_total(event es_events) RETURNS void LANGUAGE sql AS $$
	    INSERT INTO totals VALUES (event.aggregate_id, (event.data->>'amount')::numeric)
	    ON CONFLICT (aggregate_id) DO UPDATE SET total = totals.total + excluded.total
	$$;
	CREATE FUNCTION reset_totals(aggregate_id text) RETURNS void LANGUAGE sql AS $$
	    DELETE FROM totals WHERE $1 IS NULL OR totals.aggregate_id = $1
	$$;
	SELECT es_register_projection('totals', 'add_total(es_events)', ARRAY['ACCOUNT_BALANCE_UPDATED'],
	                              reset_function => 'reset_totals(text)');
	SELECT es_register_projection('es_accounts');
});
$slow = $node->background_psql('postgres');
$slow->query_safe(q{BEGIN; SELECT es_append('Customer', 'SLOW-3', 'CUSTOMER_CREATED', '{}', 0)});
$node->safe_psql(
	'postgres', q{
	SELECT es_append('Account', 'RB-1', 'ACCOUNT_OPENED', '{"balance": 0}', 0);
	SELECT es_append('Account', 'RB-1', 'ACCOUNT_BALANCE_UPDATED', '{"amount": 50}', 1);
	SELECT es_append('Account', 'RB-2', 'ACCOUNT_OPENED', '{"balance": 0}', 0);
	SELECT es_append('Account', 'RB-2', 'ACCOUNT_BALANCE_UPDATED', '{"amount": 30}', 1);
});
my $balances = q{SELECT string_agg(a.account_id || ' ' || a.balance || ' ' || coalesce(t.total::text, '-'), ', '
	ORDER BY a.account_id) FROM es_accounts a LEFT JOIN totals t ON t.aggregate_id = a.account_id
	WHERE a.account_id LIKE 'RB-%'};
wait_for(qq{SELECT ($balances) = 'RB-1 50 50, RB-2 30 30'}, 'both projections applied the events past the open appender');
is( $node->safe_psql(
		'postgres', q{SELECT count(*) FROM es_consumers c JOIN es_events e ON e.aggregate_id = 'RB-1'
	                   WHERE c.name IN ('totals', 'es_accounts') AND c.log_seq IS NOT NULL
	                     AND (e.tx_id, e.position) > (c.checkpoint_tx, c.checkpoint_position)}),
	'4', 'read in the log, above their checkpoints');
is( $node->safe_psql(
		'postgres', q{SELECT es_rebuild_projection('totals', 'RB-1') || ' ' || es_rebuild_projection('es_accounts', 'RB-1')}),
	'1 2', 'each rebuild of one aggregate replays its events');
is($node->safe_psql('postgres', $balances), 'RB-1 50 50, RB-2 30 30', 'and its rows are as before');
$node->safe_psql('postgres', q{SELECT es_append('Account', 'RB-1', 'ACCOUNT_BALANCE_UPDATED', '{"amount": 20}', 2)});
wait_for(qq{SELECT ($balances) = 'RB-1 70 70, RB-2 30 30'},
	'the next event applied once, and none of the replayed ones again');
$node->safe_psql('postgres', q{SELECT es_rebuild_projection('totals')});
wait_for(qq{SELECT ($balances) = 'RB-1 70 70, RB-2 30 30'},
	'after a rebuild of every aggregate, the worker applies again what is above the horizon');
$slow->query_safe('COMMIT');
$slow->quit;
$node->safe_psql('postgres', q{SELECT es_append('Account', 'RB-2', 'ACCOUNT_BALANCE_UPDATED', '{"amount": 5}', 2)});
wait_for(qq{SELECT ($balances) = 'RB-1 70 70, RB-2 35 35'}, 'and goes on from there, once each');

$node->stop;
done_testing();
