# A failover with the Kafka mirror on: a primary and a streaming standby
# whose slot the mirror waits for (ultracore_es.kafka_standby_slots), under
# load; the standby stops, the primary goes on appending (the mirror holds
# those events), then is killed with -9 mid-load; the standby is promoted.
# Every ce_id on Kafka exists on the new primary with the same aggregate and
# version, the new primary's mirror resumes from the replicated checkpoint
# without a gap and claims the store on the fence topic, and the old
# primary, restarted as a primary with the standby wait off, neither
# mirrors its extra events nor ingests: it is fenced.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/..";
use EsKafka;
use IPC::Run;

my $kafka = EsKafka->new('es.Account:4', 'ultracore_es.fence:1', 'in.Events:2');

my $primary = $kafka->node('primary', q{
ultracore_es.kafka_standby_slots = 'standby1'
ultracore_es.kafka_ingest_topics = 'in.Events'
ultracore_es.kafka_batch_size = 200
ultracore_es.kafka_consumer_properties = 'session.timeout.ms=6000'
}, init => { allows_streaming => 1 });
$primary->start;
$primary->safe_psql('postgres', q{
	CREATE EXTENSION ultracore_es;
	SELECT pg_create_physical_replication_slot('standby1', true);
	SELECT es_set_kafka_route('Customer', NULL);	-- ingested, not mirrored: Kafka's counts stay the mirror's
});
$primary->backup('b1');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b1', has_streaming => 1);
$standby->append_conf('postgresql.conf', "primary_slot_name = 'standby1'\n");
$standby->start;

sub mirror_caught_up
{
	my ($node, $what) = @_;
	ok($node->poll_query_until('postgres',
			q{SELECT lag_events = 0 FROM es_kafka_status WHERE component = 'mirror'}, 't'),
		"$what: the mirror caught up");
	return;
}

# Customers come in through the ingest: 20 before the failover, 20 after.
sub customers
{
	my ($from, $to) = @_;
	$kafka->produce(map { [ 'in.Events', "CUS-$_", { ce_id => "in-$_", ce_type => 'CUSTOMER_CREATED' }, '{}' ] }
		  $from .. $to);
	return;
}
customers(1, 20);
ok($primary->poll_query_until('postgres',
		q{SELECT count(*) = 20 FROM es_events WHERE aggregate_type = 'Customer'}, 't'),
	'the primary ingests');

# Events only once the standby has them.
$primary->safe_psql('postgres', q{
	SELECT es_append('Account', 'ACC-' || a, 'ACCOUNT_BALANCE_UPDATED', jsonb_build_object('v', v), v - 1)
	  FROM generate_series(1, 10) v, generate_series(1, 20) a ORDER BY v, a;
});
mirror_caught_up($primary, '200 events with the standby streaming');
is($kafka->messages('es.Account', 4), 200, 'the 200 events are on Kafka');

# Load: two clients appending to 50 accounts.
my $script = $primary->basedir . '/append.sql';
PostgreSQL::Test::Utils::append_to_file($script, q{
\set a random(1, 50)
SELECT es_append('Account', 'ACC-' || :a, 'ACCOUNT_BALANCE_UPDATED', '{"load": true}');
});
my ($out, $err) = ('', '');
my $load = IPC::Run::start(
	[ 'pgbench', '-n', '-c', '2', '-T', '120', '-f', $script, '-h', $primary->host, '-p', $primary->port, 'postgres' ],
	'>', \$out, '2>', \$err);
ok($primary->poll_query_until('postgres',
		q{SELECT count(*) >= 1000 FROM es_events}, 't'), 'load runs');
ok($primary->poll_query_until('postgres',
		q{SELECT events_processed >= 800 FROM es_consumers WHERE name = 'kafka_mirror'}, 't'),
	'the load is mirrored while the standby streams');

# The standby goes away; the primary appends on, the mirror holds what it reads.
$standby->stop('fast');
my $at_stop = $primary->safe_psql('postgres', 'SELECT count(*) FROM es_events');
ok($primary->poll_query_until('postgres', "SELECT count(*) >= $at_stop + 500 FROM es_events", 't'),
	'the primary appends on without its standby');
my $held = $kafka->messages('es.Account', 4);
sleep 2;
is($kafka->messages('es.Account', 4), $held, 'nothing reaches Kafka while the standby is away');
ok($primary->poll_query_until('postgres',
		q{SELECT lag_events > 0 FROM es_kafka_status WHERE component = 'mirror'}, 't'),
	'the mirror shows a lag meanwhile');

# kill -9 mid-load; the standby comes back and is promoted.
$primary->kill9;
$load->kill_kill;
$standby->start;
$standby->promote;
ok($standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()', 't'), 'the standby is promoted');
my $old_count = $at_stop;	# the standby had at most what the primary had when it stopped
my $new_count = $standby->safe_psql('postgres', 'SELECT count(*) FROM es_events');
cmp_ok($new_count, '<=', $old_count, 'the new primary lacks the events appended while its standby was away');

# Appends on the new primary wait for a standby slot it does not have (slots
# are not replicated), and it says so.
$standby->safe_psql('postgres', q{SELECT es_append('Account', 'ACC-1', 'ACCOUNT_BALANCE_UPDATED', '{"after": "promotion"}')});
ok($standby->poll_query_until('postgres',
		q{SELECT last_error LIKE 'waiting for the standbys: replication slot "standby1" does not exist%'
		    FROM es_kafka_status WHERE component = 'mirror'}, 't'),
	'the new primary\'s mirror waits for its missing standby slot, and es_kafka_status says so');

# The runbook: the new primary has no standby yet.
$standby->safe_psql('postgres', q{
	ALTER SYSTEM SET ultracore_es.kafka_standby_slots = '';
	SELECT pg_reload_conf();
});
# Appends at versions the old primary used for other events.
$standby->safe_psql('postgres', q{
	SELECT es_append('Account', 'ACC-' || a, 'ACCOUNT_BALANCE_UPDATED', '{"after": "failover"}')
	  FROM generate_series(1, 50) a, generate_series(1, 2);
});
mirror_caught_up($standby, 'the new primary');

customers(21, 40);
ok($standby->poll_query_until('postgres',
		q{SELECT count(*) = 40 AND count(DISTINCT event_id) = 40 FROM es_events WHERE aggregate_type = 'Customer'}, 't'),
	'the new primary\'s ingest takes over from the replicated offsets: every message once');

my @messages = $kafka->consume('es.Account');
my $distinct = eval { EsKafka::check_order(@messages) };
is($@, '', 'Kafka holds one event per aggregate version: no divergent "version N"');
my %stored = map { my ($id, $agg, $v) = split /\|/; ($id => "$agg/$v") }
  split /\n/, $standby->safe_psql('postgres',
	q{SELECT event_id || '|' || aggregate_id || '|' || version FROM es_events WHERE aggregate_type = 'Account'});
my @missing = grep { ($stored{ $_->{headers}{ce_id} } // '') ne "$_->{key}/$_->{headers}{ce_aggregateversion}" } @messages;
is(scalar @missing, 0, 'every ce_id on Kafka exists on the new primary, with the same aggregate and version')
  or diag explain [ map { "$_->{key} v$_->{headers}{ce_aggregateversion} $_->{headers}{ce_id}" } @missing[ 0 .. 4 ] ];
is($distinct, scalar keys %stored, 'every event of the new primary is on Kafka: the mirror resumed without a gap');

my ($claim) = map { $_->{value} } $kafka->consume('ultracore_es.fence');
like($claim, qr/"timeline":2\b/, 'the new primary claimed the store for timeline 2 on the fence topic');

# The old primary comes back as a primary (a split brain), standby wait off:
# its events past the standby's are fenced off Kafka, and it does not ingest.
my $on_kafka = $kafka->messages('es.Account', 4);
$primary->append_conf('postgresql.conf', "ultracore_es.kafka_standby_slots = ''\n");
my $log_from = -s $primary->logfile;
$primary->start;
ok($primary->wait_for_log(qr/the kafka_mirror stops: fenced: this server is on timeline 1/, $log_from),
	'the old primary\'s mirror is fenced');
ok($primary->wait_for_log(qr/the kafka_ingest stops: fenced/, $log_from), 'so is its ingest');
$primary->safe_psql('postgres', q{SELECT es_append('Account', 'OLD-1', 'ACCOUNT_OPENED', '{}')});
sleep 2;
is($kafka->messages('es.Account', 4), $on_kafka, 'the old primary sends nothing to Kafka');
is($primary->safe_psql('postgres',
		q{SELECT last_error LIKE 'fenced: %' FROM es_kafka_status WHERE component = 'mirror'}),
	't', 'es_kafka_status says why');
cmp_ok($primary->safe_psql('postgres', 'SELECT count(*) FROM es_events'), '>', $new_count,
	'it holds events the new primary lacks, which stay off Kafka');

$primary->stop;
$standby->stop;
$kafka->stop;
done_testing();
