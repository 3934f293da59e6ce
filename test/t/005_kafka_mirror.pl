# The Kafka mirror against a real Kafka wire protocol (librdkafka's mock
# cluster, three brokers), checked with kcat: every committed event reaches
# its topic, keyed by aggregate, as a CloudEvent, in each aggregate's
# version order; nothing is missing after the brokers are down for ten
# seconds, after kill -9 of the worker, or after kill -9 of the postmaster.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/..";
use EsKafka;

my $kafka = EsKafka->new('es.Account:4', 'es.Customer:2');

my $node = $kafka->node('kafka_mirror', q{
ultracore_es.kafka_batch_size = 100
});
$node->start;
$node->safe_psql(
	'postgres', q{
	CREATE EXTENSION ultracore_es;
	CREATE PROCEDURE append_accounts(prefix text, aggregates int, versions int, pause float8 DEFAULT 0)
	LANGUAGE plpgsql AS $$
	BEGIN
	    FOR v IN 1..versions LOOP
	        PERFORM es_append('Account', prefix || a, CASE WHEN v = 1 THEN 'ACCOUNT_OPENED' ELSE 'ACCOUNT_BALANCE_UPDATED' END,
	                          jsonb_build_object('balance', v), v - 1, correlation_id => 'req-' || v)
	           FROM generate_series(1, aggregates) a;
	        COMMIT;
	        PERFORM pg_sleep(pause);
	    END LOOP;
	END $$;
});

# The producer's properties and the mirror's batch size, from now on.
sub producer_settings
{
	my ($properties, $batch_size) = @_;
	$node->append_conf('postgresql.conf',
		"ultracore_es.kafka_producer_properties = '$properties'\nultracore_es.kafka_batch_size = $batch_size");
	$node->reload;
	return;
}

sub mirrored_all
{
	my ($what) = @_;
	ok( $node->poll_query_until(
			'postgres', q{SELECT lag_events = 0 FROM es_kafka_status WHERE component = 'mirror'}, 't'),
		"$what: the mirror caught up");
	my @messages = $kafka->consume('es.Account');
	my $events = $node->safe_psql('postgres', q{SELECT count(*) FROM es_events WHERE aggregate_type = 'Account'});
	my $distinct = eval { EsKafka::check_order(@messages) };
	is($@, '', "$what: per-aggregate order kept, duplicates only of the same event");
	is($distinct, $events, "$what: every event on the topic ($events)");
	return scalar @messages;
}

# 10,000 events over 100 aggregates.
$node->safe_psql('postgres', q{CALL append_accounts('ACC-', 100, 100)});
my $n = mirrored_all('10,000 events');
is($n, 10000, 'no duplicate without a fault');

# The CloudEvents binary mode: data as the value, attributes as headers.
my ($m) = grep { $_->{key} eq 'ACC-7' && $_->{headers}{ce_aggregateversion} == 3 } $kafka->consume('es.Account');
is( $node->safe_psql(
		'postgres', q{
	SELECT concat_ws('|', event_id, event_type, aggregate_id, aggregate_type, version, correlation_id, data)
	  FROM es_events WHERE aggregate_id = 'ACC-7' AND version = 3}),
	join('|',
		$m->{headers}{ce_id}, $m->{headers}{ce_type}, $m->{headers}{ce_subject},
		$m->{headers}{ce_aggregatetype}, $m->{headers}{ce_aggregateversion},
		$m->{headers}{ce_correlationid}, $m->{value}),
	'headers and value carry the event');
is($m->{headers}{ce_specversion}, '1.0', 'CloudEvents 1.0');
like($m->{headers}{ce_time}, qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d/, 'ce_time in RFC 3339');
like($m->{headers}{ce_source}, qr{^/ultracore_es/\d+/postgres$}, 'ce_source names the store');

# The brokers down for ten seconds while events keep coming.
my $appender = $node->background_psql('postgres');
$appender->query_until(qr/started/, qq{\\echo started\nCALL append_accounts('OUT-', 20, 40, 0.5);\n\\echo done\n});
sleep(2);
$kafka->command('down -1');
# 400 events appended meanwhile (at 40 a second): ten seconds or so.
ok( $node->poll_query_until(
		'postgres', q{SELECT lag_events >= 400 FROM es_kafka_status WHERE component = 'mirror'}, 't'),
	'while the brokers are down, the checkpoint waits');
$kafka->command('up -1');
$appender->query_until(qr/done/, '');
$appender->quit;
mirrored_all('brokers down for ten seconds');

# A shutdown while the brokers are unreachable and messages are in flight:
# the worker does not wait for them, and nothing is lost.
$kafka->command('down -1');
$node->safe_psql('postgres', q{CALL append_accounts('TERM-', 10, 5)});
my $passes = $node->safe_psql('postgres', q{SELECT passes FROM es_worker_state() WHERE kind = 'kafka mirror'});
ok( $node->poll_query_until(
		'postgres', qq{SELECT passes >= $passes + 2 FROM es_worker_state() WHERE kind = 'kafka mirror'}, 't'),
	'the mirror looked since');
is($node->safe_psql('postgres', q{SELECT lag_events FROM es_kafka_status WHERE component = 'mirror'}),
	50, 'the events wait for the brokers');
my $stop_started = time;
$node->stop('fast');
my $stop_seconds = time - $stop_started;
cmp_ok($stop_seconds, '<', 15, "the server stops with the brokers down ($stop_seconds s)");
$kafka->command('up -1');
$node->start;
mirrored_all('stopped with the brokers down');

# kill -9 of the worker in the middle of a backlog (slow brokers, so that it is one).
$kafka->command('rtt -1 200');
$node->safe_psql('postgres', q{CALL append_accounts('KILLW-', 50, 40)});
ok( $node->poll_query_until(
		'postgres', q{SELECT events > 12000 FROM es_kafka_status WHERE component = 'mirror'}, 't'),
	'the mirror is draining the backlog');
my $log_offset = -s $node->logfile;
kill 'KILL', $node->safe_psql('postgres', q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'ultracore_es kafka mirror'});
$node->wait_for_log(qr/all server processes terminated; reinitializing/, $log_offset);
ok($node->poll_query_until('postgres', 'SELECT true'), 'server back after kill -9 of the worker');
$kafka->command('rtt -1 0');	# fast brokers again for kcat
mirrored_all('kill -9 of the worker');

# kill -9 of the postmaster in the middle of a backlog.
$kafka->command('rtt -1 200');
$node->safe_psql('postgres', q{CALL append_accounts('KILLP-', 50, 40)});
ok( $node->poll_query_until(
		'postgres', q{SELECT lag_events < 1900 FROM es_kafka_status WHERE component = 'mirror'}, 't'),
	'the mirror is draining the backlog');
# The orphaned children notice the postmaster's death and exit on their own
# (the worker after closing its Kafka clients); a new postmaster refuses to
# start while any of them is still attached to the shared memory.
my $postmaster = (split /\n/, slurp_file($node->data_dir . '/postmaster.pid'))[0];
my @processes = ($postmaster, split(' ', `ps -o pid= --ppid $postmaster`));
$node->kill9;
for (1 .. 60)
{
	last unless grep { kill 0, $_ } @processes;
	sleep 1;
}
$node->start;
$kafka->command('rtt -1 0');
mirrored_all('kill -9 of the postmaster');

# An aggregate type routed elsewhere, one not mirrored.
$node->safe_psql(
	'postgres', q{
	SELECT es_set_kafka_route('Customer', 'customers-v1');
	SELECT es_set_kafka_route('Loan', NULL);
	SELECT es_append('Customer', 'C-1', 'CUSTOMER_CREATED', '{"name": "routed"}', 0);
	SELECT es_append('Loan', 'L-1', 'LOAN_APPLICATION_SUBMITTED', '{"amount": 1}', 0);
	SELECT es_append('Account', 'AFTER-ROUTES', 'ACCOUNT_OPENED', '{}', 0);
});
mirrored_all('routes');
is(scalar(grep { $_->{key} eq 'C-1' } $kafka->consume('customers-v1')), 1, 'routed to its topic');
my @default = $kafka->consume('es.Customer');
is(scalar @default, 0, 'not to the default one');

# Produce requests that fail (an error librdkafka does not retry, and that
# is not a refusal for good, which would park the events: 010): the failed
# deliveries recreate the producer, which produces again from the
# checkpoint after a backoff.
$log_offset = -s $node->logfile;
$kafka->command('produce-errors 5 -1');    # UNKNOWN_SERVER_ERROR
$node->safe_psql('postgres', q{CALL append_accounts('REFUSED-', 10, 3)});
$node->wait_for_log(qr/producing again from the mirror's checkpoint in \d+ ms/, $log_offset);
like( $node->safe_psql('postgres', q{SELECT last_error FROM es_kafka_status WHERE component = 'mirror'}),
	qr/unknown/i, 'the failure is in es_kafka_status');
mirrored_all('deliveries failed');
is($node->safe_psql('postgres', q{SELECT count(*) FROM es_kafka_mirror_dead_letters}), '0', 'nothing parked');

# What the mirror's promises need is its own, whatever
# kafka_producer_properties says: a delivery report for every message (its
# checkpoint moves on them); a transactional.id there without
# kafka_transactional is refused, with a warning, until it goes.
$node->append_conf('postgresql.conf',
	q{ultracore_es.kafka_producer_properties = 'delivery.report.only.error=true'});
$node->reload;
$node->safe_psql('postgres', q{CALL append_accounts('DRONLY-', 10, 3)});
mirrored_all('delivery.report.only.error in the properties');
$log_offset = -s $node->logfile;
$node->append_conf('postgresql.conf', q{ultracore_es.kafka_producer_properties = 'transactional.id=mine'});
$node->reload;
$node->safe_psql('postgres', q{CALL append_accounts('TXNID-', 10, 1)});
$node->wait_for_log(qr/invalid producer setting: transactional\.id is set, but ultracore_es\.kafka_transactional is off/,
	$log_offset);
$node->append_conf('postgresql.conf', q{ultracore_es.kafka_producer_properties = ''});
$node->reload;
mirrored_all('the transactional.id taken out');

# A transactional producer, partitioning as Java clients do.
$node->append_conf(
	'postgresql.conf', q{
ultracore_es.kafka_transactional = on
ultracore_es.kafka_partitioner = 'murmur2_random'
});
$node->reload;
$node->safe_psql('postgres', q{CALL append_accounts('TXN-', 20, 10)});
mirrored_all('transactional producer');
my @txn = grep { $_->{key} =~ /^TXN-/ } $kafka->consume('es.Account');
is(scalar @txn, 200, 'every event of the transactional batches on the topic');
is( scalar(grep { $_->{partition} != java_partition($_->{key}, 4) } @txn),
	0, 'each aggregate on the partition the Java client would choose');

# A transactional producer made while the brokers answer in 200 ms: its
# init_transactions, several round trips, is resumed pass after pass (one
# made again after each call of a second never started).  Then
# back-pressure in a Kafka transaction: a batch larger than librdkafka's
# queue is handed over in parts, pass after pass, and committed once all
# of it is (a commit begun before made the producer refuse the rest, and
# the mirror rewound to the batch for ever).
$kafka->command('rtt -1 200');
producer_settings('queue.buffering.max.messages=50', 500);
$node->safe_psql('postgres', q{CALL append_accounts('SLOW-', 10, 1)});
mirrored_all('a transactional producer readied while the brokers are slow');
$log_offset = -s $node->logfile;
$node->safe_psql('postgres', q{CALL append_accounts('QFULL-', 500, 1)});
mirrored_all('a transactional batch larger than the producer queue');
ok(!$node->log_contains(qr/producing again from the mirror's checkpoint/, $log_offset),
	'handed over without a rewind');
$kafka->command('rtt -1 0');
producer_settings('', 100);

# A mirror turned on starts once it has read the fence's claims, not at
# its next pass: with passes ten minutes apart and no append to wake it,
# the events stored while Kafka was off still reach the topic.
$node->append_conf('postgresql.conf', "ultracore_es.kafka_brokers = ''");
$node->reload;
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 0 FROM es_worker_state() WHERE kind = 'kafka mirror' AND pid IS NOT NULL}, 't'),
	'Kafka off: the mirror stopped');
$node->safe_psql('postgres', q{CALL append_accounts('OFF-', 10, 10)});
$node->append_conf('postgresql.conf',
	"ultracore_es.worker_poll_interval = '10min'\nultracore_es.kafka_brokers = '$kafka->{bootstrap}'");
$node->reload;
mirrored_all('Kafka on again, passes ten minutes apart');

$node->stop;
$kafka->stop;
done_testing();

# The Java client's default partition of a key: murmur2 (Kafka's
# Utils.murmur2), positive, modulo the partitions.
sub java_partition
{
	my ($key, $partitions) = @_;
	my @b = unpack('C*', $key);
	my $m = 0x5bd1e995;
	my $mul = sub { my ($x, $y) = @_; return (($x & 0xffff) * $y + ((($x >> 16) * $y & 0xffff) << 16)) & 0xffffffff; };
	my $h = (0x9747b28c ^ scalar @b) & 0xffffffff;
	my $n4 = int(@b / 4);
	for my $i (0 .. $n4 - 1)
	{
		my $k = $b[ 4 * $i ] | ($b[ 4 * $i + 1 ] << 8) | ($b[ 4 * $i + 2 ] << 16) | ($b[ 4 * $i + 3 ] << 24);
		$k = $mul->($k, $m);
		$k ^= $k >> 24;
		$k = $mul->($k, $m);
		$h = $mul->($h, $m) ^ $k;
	}
	my $rest = @b % 4;
	$h ^= $b[ 4 * $n4 + 2 ] << 16 if $rest >= 3;
	$h ^= $b[ 4 * $n4 + 1 ] << 8 if $rest >= 2;
	$h = $mul->($h ^ $b[ 4 * $n4 ], $m) if $rest >= 1;
	$h ^= $h >> 13;
	$h = $mul->($h, $m);
	$h ^= $h >> 15;
	return ($h & 0x7fffffff) % $partitions;
}
