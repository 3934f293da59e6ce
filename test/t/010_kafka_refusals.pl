# What Kafka refuses for good does not stop the mirror: a topic the brokers
# refuse (as to a producer without the ACL), and an event larger than the
# producer may send, are parked in es_kafka_mirror_dead_letters by the
# checkpoint that passes them, once each, while every other event reaches
# its topic, in order, without the in-flight window being sent again.  An
# append that the mirror could not send is refused while the mirror is on.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/..";
use EsKafka;

my $kafka = EsKafka->new('es.Account:4', 'es.Customer:2', 'es.Secret:2');
my $window = 100;
my $node = $kafka->node('kafka_refusals', qq{
ultracore_es.kafka_batch_size = $window
ultracore_es.kafka_producer_properties = 'message.max.bytes=20000'
});
$node->start;
$node->safe_psql(
	'postgres', q{
	CREATE EXTENSION ultracore_es;
	SELECT es_set_kafka_route('Audit', 'es.Secret');
	-- Account, Audit (to es.Secret) and Customer events interleaved, 20 transactions.
	CREATE PROCEDURE append_mixed(prefix text, rounds int) LANGUAGE plpgsql AS $$
	BEGIN
	    FOR v IN 1..rounds LOOP
	        PERFORM es_append('Account', prefix || 'A' || a, CASE WHEN v = 1 THEN 'ACCOUNT_OPENED' ELSE 'ACCOUNT_BALANCE_UPDATED' END,
	                          jsonb_build_object('balance', v), v - 1)
	           FROM generate_series(1, 15) a;
	        PERFORM es_append('Audit', prefix || 'S' || a, 'AUDIT_RECORD_CREATED', jsonb_build_object('v', v))
	           FROM generate_series(1, 3) a;
	        PERFORM es_append('Customer', prefix || 'C' || a, CASE WHEN v = 1 THEN 'CUSTOMER_CREATED' ELSE 'CUSTOMER_UPDATED' END,
	                          jsonb_build_object('v', v), v - 1)
	           FROM generate_series(1, 5) a;
	        COMMIT;
	    END LOOP;
	END $$;
});
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'ultracore_es kafka mirror'})
  or die 'no mirror';

sub caught_up
{
	my ($what) = @_;
	ok( $node->poll_query_until(
			'postgres', q{SELECT (SELECT checkpoint_position FROM es_consumers WHERE name = 'kafka_mirror')
			                   = (SELECT max(position) FROM es_events)}),
		"$what: the mirror's checkpoint reached the last event");
}

sub on_topic
{
	my ($topic, $type, $partitions, $what) = @_;
	my @messages = $kafka->consume($topic);
	my $events = $node->safe_psql('postgres', "SELECT count(*) FROM es_events e WHERE aggregate_type = '$type'
		AND NOT EXISTS (SELECT FROM es_kafka_mirror_dead_letters d WHERE d.position = e.position)");
	my $distinct = eval { EsKafka::check_order(@messages) };
	is($@, '', "$what: $topic in per-aggregate order");
	is($distinct, $events, "$what: every $type event not parked on $topic");
	cmp_ok($kafka->messages($topic, $partitions), '<=', $events + $window,
		"$what: the high watermark of $topic at most one window past its events (nothing resent in a loop)");
}

# 1. A topic the brokers refuse for good.
$kafka->command('topic-error es.Secret 29');    # TOPIC_AUTHORIZATION_FAILED
my $log_offset = -s $node->logfile;
$node->safe_psql('postgres', q{CALL append_mixed('R1-', 20)});
caught_up('a refused topic');
on_topic('es.Account', 'Account', 4, 'a refused topic');
on_topic('es.Customer', 'Customer', 2, 'a refused topic');
is( $node->safe_psql('postgres', q{
	SELECT count(*), count(DISTINCT position), bool_and(topic = 'es.Secret'), bool_and(error ~* 'authori')
	  FROM es_kafka_mirror_dead_letters}),
	'60|60|t|t', 'each refused event parked once, with its topic and the error');
is( $node->safe_psql('postgres', q{
	SELECT count(*) FROM es_events e WHERE aggregate_type = 'Audit'
	   AND NOT EXISTS (SELECT FROM es_kafka_mirror_dead_letters d WHERE d.event_id = e.event_id)}),
	'0', 'the parked events are the refused ones');
ok($node->log_contains(qr/refused for good by Kafka, parked in es_kafka_mirror_dead_letters/, $log_offset),
	'the log says so');
is( $node->safe_psql('postgres', q{SELECT status || ': ' || detail FROM es_health() WHERE component = 'kafka mirror'}),
	'warning: lag 0 events, 0.000 s; 60 events refused by Kafka, parked in es_kafka_mirror_dead_letters',
	'es_health warns');
is($node->safe_psql('postgres', q{SELECT dead_letters FROM es_kafka_status WHERE component = 'mirror'}),
	'60', 'es_kafka_status counts them');

# 2. The topic accepted again: the mirror asks again within ten seconds,
# and the topic's later events go there.
$kafka->command('topic-error es.Secret 0');
my $sent = 0;
for my $probe (1 .. 30)
{
	$node->safe_psql('postgres', "SELECT es_append('Audit', 'PROBE-$probe', 'AUDIT_RECORD_CREATED', '{}')");
	caught_up("probe $probe");
	$sent = grep { $_->{key} =~ /^PROBE-/ } $kafka->consume('es.Secret');
	last if $sent > 0;
	sleep(1);
}
cmp_ok($sent, '>', 0, 'the topic is written again once it accepts messages');
$node->safe_psql('postgres', q{CALL append_mixed('R2-', 2)});
caught_up('the topic accepted again');
is(scalar(grep { $_->{key} =~ /^R2-/ } $kafka->consume('es.Secret')), 6, 'the later events of that topic are sent');

# 3. Too large for the producer (message.max.bytes = 20000): refused at
# append while the mirror serves the store.
my ($rc, $out, $err) = $node->psql('postgres',
	q{SELECT es_append('Account', 'BIG-1', 'ACCOUNT_OPENED', jsonb_build_object('blob', repeat('x', 30000)), 0)});
like($err, qr/event is too large for the Kafka mirror/, 'an event the mirror cannot send is refused at append');
like($err, qr/message\.max\.bytes/, 'the error names the limit');
is($node->safe_psql('postgres', q{SELECT count(*) FROM es_events WHERE aggregate_id = 'BIG-1'}), '0',
	'nothing of it stored');
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM (SELECT es_append('Account', 'SMALL-1', 'ACCOUNT_OPENED', jsonb_build_object('blob', repeat('x', 10000)), 0)) a}),
	'1', 'one that fits is accepted');

# 4. Appended while Kafka was off, then too large for the mirror: parked,
# and the events after it go on.
$node->append_conf('postgresql.conf', "ultracore_es.kafka_brokers = ''");
$node->reload;
$node->poll_query_until('postgres',
	q{SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'ultracore_es kafka mirror'})
  or die 'the mirror did not stop';
$node->safe_psql('postgres', q{
	SELECT es_append('Account', 'BIG-2', 'ACCOUNT_OPENED', jsonb_build_object('blob', repeat('x', 30000)), 0);
	CALL append_mixed('R3-', 2);
});
$node->append_conf('postgresql.conf', "ultracore_es.kafka_brokers = '" . $kafka->bootstrap . "'");
$node->reload;
caught_up('an event too large');
is( $node->safe_psql('postgres', q{SELECT topic || ': ' || error FROM es_kafka_mirror_dead_letters WHERE aggregate_id = 'BIG-2'}),
	'es.Account: Broker: Message size too large', 'the event too large is parked');
on_topic('es.Account', 'Account', 4, 'an event too large');
is(scalar(grep { $_->{key} eq 'BIG-2' } $kafka->consume('es.Account')), 0, 'and not sent');

$node->stop;
$kafka->stop;
done_testing();
