# The commit log, with wal_level = logical: the events appended before it
# existed are numbered once as its tail; a transaction held open 15 s in
# another database delays neither es_read_log nor a handler, an async
# projection or the Kafka mirror; one held open after appending delays
# es_read_log for nobody (es_read_all waits for it);
# six writers with random 0-2 s transactions and 20% rollbacks (and a reader
# that moves from es_read_all to es_read_log with its checkpoint), through a
# kill -9 of the sequencer, of the postmaster and a slot dropped by hand:
# every committed event in the log once, none rolled back, in commit order.
# DROP EXTENSION (or DROP SCHEMA ... CASCADE of its schema) drops the slot.
# A standby promoted mid-load makes its own
# slot and numbers what its replicated log lacks once.
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

# The mirror's broker, for the window with another database's transaction open.
my $kafka = EsKafka->new('es.Customer:1');

our $node = EsNode->new('commit_log', q{
wal_level = logical
ultracore_es.commit_log = off
ultracore_es.worker_poll_interval = 100
max_prepared_transactions = 4
});
$node->start;

sub wait_for
{
	my ($query, $what, $on) = @_;
	ok(($on // $node)->poll_query_until('postgres', $query), $what);
}

# Every committed event in the log exactly once, nothing else, and the
# decoded transactions numbered in the order they committed.
sub check_log
{
	my ($what, $on) = @_;
	local $node = $on // $node;
	wait_for(q{SELECT (SELECT count(*) FROM es_events)
	                  = (SELECT count(*) FROM es_commit_log, unnest(positions))},
		"$what: the log caught up");
	is( $node->safe_psql(
			'postgres', q{
		SELECT (SELECT count(*) FROM es_read_log(max_count => 1000000)) || ' '
		       || (SELECT count(DISTINCT position) FROM es_read_log(max_count => 1000000)) || ' '
		       || (SELECT count(*) FROM es_events)}),
		join(' ', ($node->safe_psql('postgres', 'SELECT count(*) FROM es_events')) x 3),
		"$what: es_read_log returns every event once");
	is( $node->safe_psql(
			'postgres', q{
		SELECT count(*) FROM (SELECT commit_lsn, lag(commit_lsn) OVER (ORDER BY seq) AS prev
		                        FROM es_commit_log WHERE xid IS NOT NULL) s
		 WHERE commit_lsn <= prev}),
		'0', "$what: numbered in commit order");
	is($node->safe_psql('postgres', q{SELECT max(seq) = count(*) FROM es_commit_log}),
		't', "$what: numbers without a gap");
	return;
}

$node->safe_psql(
	'postgres', q{
	CREATE EXTENSION ultracore_es;
	CREATE DATABASE other;
	CREATE TABLE got (event_id text, at timestamptz);
	CREATE FUNCTION got(event es_events) RETURNS void LANGUAGE sql AS $$
	    INSERT INTO got VALUES (event.event_id, clock_timestamp())
	$$;
	SELECT es_register_handler('got', 'got(es_events)');
	CREATE TABLE projected (event_id text);
	CREATE FUNCTION projected(event es_events) RETURNS void LANGUAGE sql AS $$
	    INSERT INTO projected VALUES (event.event_id)
	$$;
	SELECT es_register_projection('projected', 'projected(es_events)');
	SELECT es_append('Customer', 'BEFORE-' || g, 'CUSTOMER_CREATED', '{}', 0) FROM generate_series(1, 40) g;
});
$node->safe_psql('other', 'CREATE TABLE t (x int)');

# The log switched on: the slot is made and the 40 events become its tail.
is($node->safe_psql('postgres', q{SELECT count(*) FROM es_read_log()}), '0', 'no log while it is off');
$node->safe_psql('postgres', q{ALTER SYSTEM SET ultracore_es.commit_log = on; SELECT pg_reload_conf()});
wait_for(q{SELECT count(*) = 40 FROM es_read_log()}, 'the events before the slot are numbered as its tail');
is( $node->safe_psql(
		'postgres', q{SELECT count(*) FROM pg_replication_slots WHERE plugin = 'ultracore_es' AND slot_type = 'logical'}),
	'1', 'the store keeps a logical slot of its own plugin');
like($node->safe_psql('postgres', q{SELECT status || ': ' || detail FROM es_health() WHERE component = 'commit log'}),
	qr/^ok: logical decoding: slot ultracore_es_\d+, up to seq \d+, the slot keeps .* of WAL; the slot was made at .*, numbering 40 events committed without it as its tail; \d+ of \d+ delivery units read it/,
	'es_health says the log comes from logical decoding, and the tail it numbered');

# A transaction in another database that wrote a row stays open 15 s; events
# appended meanwhile reach es_read_log, the handler, the async projection and
# Kafka (the mirror's checkpoint passes an event once the broker has it)
# within 2 s of commit.
$node->safe_psql('postgres',
	"ALTER SYSTEM SET ultracore_es.kafka_brokers = '" . $kafka->bootstrap . "'; SELECT pg_reload_conf()");
wait_for(q{SELECT lag_events = 0 FROM es_kafka_status WHERE component = 'mirror'}, 'the mirror caught up');
my %reached = (
	'es_read_log' => q{SELECT count(*) FROM es_read_log(max_count => 100000) WHERE aggregate_id = '%s'},
	'the handler' => q{SELECT count(*) FROM got g JOIN es_events e USING (event_id) WHERE e.aggregate_id = '%s'},
	'the async projection' =>
	  q{SELECT count(*) FROM projected p JOIN es_events e USING (event_id) WHERE e.aggregate_id = '%s'},
	'the Kafka mirror' => q{SELECT count(*) FROM es_consumers c, es_events e
	                         WHERE c.name = 'kafka_mirror' AND e.aggregate_id = '%s'
	                           AND (e.tx_id, e.position) <= (c.checkpoint_tx, c.checkpoint_position)});
my %worst = map { $_ => 0 } keys %reached;
my $other = $node->background_psql('other');
$other->query_safe('BEGIN; INSERT INTO t VALUES (1)');
my $t0 = time;
my $i = 0;
while (time - $t0 < 15 || $i < 10)
{
	$i++;
	my $committed = time;
	$node->safe_psql('postgres', qq{SELECT es_append('Customer', 'DURING-$i', 'CUSTOMER_CREATED', '{}', 0)});
	my %at;
	while (keys %at < keys %reached && time - $committed < 10)
	{
		foreach my $reader (grep { !defined $at{$_} } keys %reached)
		{
			$at{$reader} = time
			  if $node->safe_psql('postgres', sprintf($reached{$reader}, "DURING-$i")) eq '1';
		}
		usleep(20_000);
	}
	foreach my $reader (keys %reached)
	{
		my $took = ($at{$reader} // 1e9) - $committed;
		$worst{$reader} = $took if $took > $worst{$reader};
	}
	usleep(1_200_000);
}
is( $node->safe_psql(
		'postgres', q{SELECT count(*) FROM pg_stat_activity WHERE datname = 'other' AND backend_xid IS NOT NULL
		                AND xact_start <= now() - interval '15 s'}),
	'1', 'the other database\'s transaction held an xid open for 15 s meanwhile');
foreach my $reader (sort keys %reached)
{
	cmp_ok($worst{$reader}, '<', 2,
		sprintf('%s had each event within 2 s of its commit (worst %.3f s)', $reader, $worst{$reader}));
}
$other->query_safe('COMMIT');
$other->quit;
$node->safe_psql('postgres', 'ALTER SYSTEM RESET ultracore_es.kafka_brokers; SELECT pg_reload_conf()');

# A transaction that appended and stays open: es_read_log goes on past it,
# es_read_all waits for it, and it takes its place in the log when it commits.
my $slow = $node->background_psql('postgres');
$slow->query_safe(q{BEGIN; SELECT es_append('Customer', 'SLOW', 'CUSTOMER_CREATED', '{}', 0)});
$node->safe_psql('postgres', q{SELECT es_append('Customer', 'FAST', 'CUSTOMER_CREATED', '{}', 0)});
wait_for(q{SELECT count(*) = 1 FROM es_read_log(max_count => 100000) WHERE aggregate_id = 'FAST'},
	'a later commit is in the log while an earlier appender is open');
is($node->safe_psql('postgres', q{SELECT count(*) FROM es_read_all(max_count => 100000) WHERE aggregate_id = 'FAST'}),
	'0', 'es_read_all waits below the open appender');
$slow->query_safe('COMMIT');
$slow->quit;
wait_for(q{SELECT count(*) = 1 FROM es_read_log(max_count => 100000) WHERE aggregate_id = 'SLOW'},
	'the open appender is logged at its commit');
is( $node->safe_psql(
		'postgres', q{
	SELECT (SELECT seq FROM es_read_log(max_count => 100000) WHERE aggregate_id = 'FAST')
	     < (SELECT seq FROM es_read_log(max_count => 100000) WHERE aggregate_id = 'SLOW')}),
	't', 'in commit order: the later commit first');
check_log('after the open transactions');

# Six writers, random transactions of 0-2 s, a fifth of them rolled back.
my $writers = EsWriters->new($node, 2000);
sub writers { return $writers->start($_[0]); }

# Under that load, a reader of es_read_all moves to es_read_log with its
# checkpoint (es_read_log_start), skipping the rows at or below it: every
# event once between the two.
my $load = writers(8);
my ($tx, $pos, $twice) = ('0', 0, 0);
my %read;
my $t_read = time;
while (time - $t_read < 4)
{
	foreach my $row (split /\n/,
		$node->safe_psql('postgres', qq{SELECT event_id, tx_id, position FROM es_read_all('$tx'::xid8, $pos, max_count => 40)}))
	{
		my ($id, $t, $p) = split /\|/, $row;
		$twice++ if $read{$id}++;
		($tx, $pos) = ($t, $p);
	}
	usleep(100_000);
}
my ($seq, $log_pos) = ($node->safe_psql('postgres', qq{SELECT es_read_log_start('$tx')}), 0);
my $page_log = sub {
	my $n = 0;
	foreach my $row (split /\n/,
		$node->safe_psql('postgres', qq{SELECT seq, position, event_id, (tx_id, position) <= ('$tx'::xid8, $pos)
		                                   FROM es_read_log($seq, $log_pos, 40)}))
	{
		my ($s, $p, $id, $skip) = split /\|/, $row;
		($seq, $log_pos) = ($s, $p);
		$n++;
		next if $skip eq 't';
		$twice++ if $read{$id}++;
	}
	return $n;
};
while ($load->pumpable)
{
	$page_log->();
	usleep(100_000);
	$load->pump_nb;
}
$load->finish;
check_log('six writers with rollbacks');
while ($page_log->() > 0) { }
is(scalar(keys %read) . " $twice", $node->safe_psql('postgres', 'SELECT count(*) FROM es_events') . ' 0',
	'a reader that moved from es_read_all to es_read_log mid-load read every event once');
is($node->safe_psql('postgres', q{SELECT count(*) FROM es_events WHERE data->>'r' = '1'}),
	'0', 'no rolled-back append exists');

# kill -9 of the sequencer mid-stream.
$load = writers(8);
sleep 3;
my $log_offset = -s $node->logfile;
my $pid = $node->safe_psql('postgres', q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'ultracore_es sequencer'});
ok($pid =~ /^\d+$/, 'the sequencer runs');
kill 'KILL', $pid;
$node->wait_for_log(qr/all server processes terminated; reinitializing/, $log_offset);
eval { $load->finish };
wait_for('SELECT true', 'server back after the sequencer was killed');
$load = writers(4);
$load->finish;
check_log('after kill -9 of the sequencer');

# kill -9 of the postmaster mid-stream.
$load = writers(8);
sleep 3;
# A new postmaster refuses to start while an orphaned child is still
# attached to the shared memory: they notice the death and exit on their own.
my $postmaster = (split /\n/, slurp_file($node->data_dir . '/postmaster.pid'))[0];
my @processes = ($postmaster, split(' ', `ps -o pid= --ppid $postmaster`));
$node->kill9;
eval { $load->finish };
for (1 .. 60)
{
	last unless grep { kill 0, $_ } @processes;
	sleep 1;
}
$node->start;
$load = writers(4);
$load->finish;
check_log('after kill -9 of the postmaster');

# The slot dropped by hand: the sequencer makes it again and numbers what it
# missed as a new tail; nothing skipped, nothing twice.
my $slot = $node->safe_psql('postgres', q{SELECT slot_name FROM pg_replication_slots WHERE plugin = 'ultracore_es'});
$node->safe_psql('postgres', q{ALTER SYSTEM SET ultracore_es.commit_log = off; SELECT pg_reload_conf()});
wait_for(q{SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'ultracore_es sequencer')},
	'the sequencer stopped');
$node->safe_psql('postgres', qq{SELECT pg_drop_replication_slot('$slot')});
$node->safe_psql('postgres',
	q{SELECT es_append('Customer', 'UNSLOTTED-' || g, 'CUSTOMER_CREATED', '{}', 0) FROM generate_series(1, 25) g});
$node->safe_psql('postgres', q{ALTER SYSTEM SET ultracore_es.commit_log = on; SELECT pg_reload_conf()});
wait_for(qq{SELECT count(*) = 1 FROM pg_replication_slots WHERE slot_name = '$slot'}, 'the slot is made again');
$load = writers(4);
$load->finish;
check_log('after the slot was dropped');
is($node->safe_psql('postgres', q{SELECT tail_events FROM es_commit_log_state}),
	'25', 'the events appended without a slot are its new tail');
like($node->safe_psql('postgres', q{SELECT status || ': ' || detail FROM es_health() WHERE component = 'commit log'}),
	qr/^ok: .*; the slot was made at .*, numbering 25 events committed without it as its tail/,
	'es_health says the slot was made again, and what it numbered as its tail');

# A failover: a standby streams the store, its log with it; promoted, it has
# no slot (PostgreSQL 15's logical slots do not follow a promotion), so its
# sequencer makes one and numbers what the replicated log lacks (here what
# the primary appended with its sequencer stopped), once, after the
# replicated numbers.
my $primary = EsNode->new('log_primary', q{
ultracore_es.worker_poll_interval = 100
}, init => { allows_streaming => 'logical' });
$primary->start;
$primary->safe_psql('postgres', q{CREATE EXTENSION ultracore_es});
$primary->safe_psql('postgres',
	q{SELECT es_append('Customer', 'P-' || g, 'CUSTOMER_CREATED', '{}', 0) FROM generate_series(1, 30) g});
check_log('on the primary', $primary);
$primary->backup('b1');
my $standby = PostgreSQL::Test::Cluster->new('log_standby');
$standby->init_from_backup($primary, 'b1', has_streaming => 1);
$standby->start;
# The primary's sequencer stops: what the load appends reaches the standby
# unnumbered, for the promoted server's tail.
$primary->safe_psql('postgres', q{ALTER SYSTEM SET ultracore_es.commit_log = off; SELECT pg_reload_conf()});
wait_for(q{SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'ultracore_es sequencer')},
	'the primary\'s sequencer stopped', $primary);
$load = $writers->start(6, $primary, 4);
sleep 4;
$primary->kill9;
eval { $load->finish };
$standby->promote;
wait_for('SELECT NOT pg_is_in_recovery()', 'the standby is promoted', $standby);
my $replicated = $standby->safe_psql('postgres', q{SELECT max(seq) FROM es_commit_log});
cmp_ok($replicated, '>', 1, 'the standby has the primary\'s log, replicated');
wait_for(q{SELECT EXISTS (SELECT FROM pg_replication_slots WHERE plugin = 'ultracore_es')
	                AND tail_snapshot IS NOT NULL FROM es_commit_log_state},
	'the promoted server made its slot and tail', $standby);
cmp_ok($standby->safe_psql('postgres', q{SELECT tail_events FROM es_commit_log_state}),
	'>', 0, 'the events the primary had not numbered are in the promoted server\'s tail');
$standby->safe_psql('postgres',
	q{SELECT es_append('Customer', 'PROMOTED-' || g, 'CUSTOMER_CREATED', '{}', 0) FROM generate_series(1, 10) g});
check_log('after the promotion', $standby);
$standby->stop;

# DROP EXTENSION drops the slot, which would otherwise keep the WAL for ever.
$node->safe_psql('postgres', 'DROP EXTENSION ultracore_es CASCADE');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_replication_slots}), '0', 'DROP EXTENSION drops the slot');
# So does a drop of the extension by a cascade: its schema dropped.
$node->safe_psql('postgres', 'CREATE SCHEMA es2; CREATE EXTENSION ultracore_es SCHEMA es2');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_replication_slots WHERE plugin = 'ultracore_es'}),
	'the sequencer made a slot for the extension again');
$node->safe_psql('postgres', 'DROP SCHEMA es2 CASCADE');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_replication_slots}), '0',
	'DROP SCHEMA ... CASCADE of the extension\'s schema drops the slot');

$node->stop;
done_testing();
