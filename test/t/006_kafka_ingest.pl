# The Kafka ingest against librdkafka's mock cluster: 10,000 messages with
# duplicates, version conflicts, malformed JSON and unknown event types;
# exactly the valid ones are appended, once, the rest are dead-lettered, and
# kill -9 of an ingest worker in the middle neither loses nor repeats an
# append.  Two ingest workers share the partitions.
# Events this store mirrored are not ingested back, and ingested events are
# not mirrored back into the topic they came from.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/..";
use EsKafka;

my $kafka = EsKafka->new('bank.in:4', 'es.Account:4');

my $node = $kafka->node('kafka_ingest', q{
ultracore_es.kafka_ingest_topics = 'bank.in, es.Account'
ultracore_es.kafka_ingest_batch_size = 100
ultracore_es.kafka_ingest_workers = 2
# librdkafka's mock holds the first join for 3 s and a dead member for a
# session timeout: keep both short.
ultracore_es.kafka_consumer_properties = 'session.timeout.ms=6000;heartbeat.interval.ms=500'
lock_timeout = '1s'
});
$node->start;
# Customer events go to the ingested topic: the ingested ones must not be
# sent back there, the local ones must be, and must not come back in.
$node->safe_psql(
	'postgres', q{
	CREATE EXTENSION ultracore_es;
	SELECT es_set_kafka_route('Customer', 'bank.in');
	SELECT es_append('Customer', 'LOCAL-' || i, 'CUSTOMER_CREATED', '{"local": true}', 0)
	  FROM generate_series(1, 10) i;
});

# The messages, in the order produced (a key's messages stay in order on
# its partition).  Account IN-a has versions 1..8, ids in-a-v; after each
# round of versions come identical resends (absorbed) and messages reusing
# a taken version under a new id (conflicts).
my @messages;
my ($valid, $duplicates, $conflicts, $malformed, $unknown, $any) = (0, 0, 0, 0, 0, 0);

sub account_message
{
	my ($a, $v, $id) = @_;
	return [
		'bank.in', "IN-$a",
		{
			ce_specversion => '1.0',
			ce_id => $id,
			ce_source => '/core-banking/ledger',
			ce_type => $v == 1 ? 'ACCOUNT_OPENED' : 'ACCOUNT_BALANCE_UPDATED',
			ce_subject => "IN-$a",
			ce_aggregatetype => 'Account',
			ce_aggregateversion => $v,
			ce_correlationid => "corr-$a",
		},
		qq({"balance": $v})
	];
}

for my $v (1 .. 8)
{
	for my $a (1 .. 1000)
	{
		push @messages, account_message($a, $v, "in-$a-$v");
		$valid++;
	}
	for my $i (grep { $_ % 8 == $v - 1 } 0 .. 499)
	{
		push @messages, account_message(2 * $i + 1, $v, sprintf('in-%d-%d', 2 * $i + 1, $v));
		$duplicates++;
		push @messages, account_message(2 * $i + 2, $v, "conflict-$i");
		$conflicts++;
	}
	for my $i (1 .. 40)
	{
		my $n = ($v - 1) * 40 + $i;
		push @messages,
		  [ 'bank.in', "BAD-$n", { ce_id => "bad-$n", ce_type => 'ACCOUNT_OPENED', ce_aggregatetype => 'Account' },
			'{"balance": ' ];
		$malformed++;
		push @messages,
		  [ 'bank.in', "ODD-$n", { ce_id => "odd-$n", ce_type => 'NO_SUCH_EVENT', ce_aggregatetype => 'Account' },
			'{}' ];
		$unknown++;
	}
	for my $i (1 .. 31)
	{
		# No version: appended at any version; no aggregate type: the event type's.
		my $n = ($v - 1) * 31 + $i;
		push @messages, [ 'bank.in', "CUS-$n", { ce_id => "cus-$n", ce_type => 'CUSTOMER_CREATED' }, '{"name": "x"}' ];
		$any++;
	}
}
# Round it up to 10,000 with more malformed messages: no ce_id.
while (@messages < 10000)
{
	my $n = scalar @messages;
	push @messages, [ 'bank.in', "NOID-$n", { ce_type => 'ACCOUNT_OPENED' }, '{}' ];
	$malformed++;
}
is(scalar @messages, 10000, 'ten thousand messages');

# The launcher starts them once the extension exists.
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 2 FROM pg_stat_activity WHERE backend_type = 'ultracore_es kafka ingest'}),
	'two ingest workers');

# All of them, then kill -9 of an ingest worker in the middle of the
# ingest.  The middle is made sure of: a session holds the offset row of
# bank.in's partition 0, so the worker that owns it cannot store a batch
# (its lock times out, it takes the batch again, and again), while the
# other one goes on.
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 4 FROM es_kafka_offsets WHERE topic = 'bank.in'}, 't'),
	'the partitions of bank.in assigned');
my $holder = $node->background_psql('postgres');
$holder->query_safe(
	q{BEGIN; SELECT 1 FROM es_kafka_offsets WHERE topic = 'bank.in' AND partition = 0 FOR UPDATE;});
$kafka->produce(@messages);
ok( $node->poll_query_until(
		'postgres', q{SELECT events_processed > 1000 FROM es_consumers WHERE name = 'kafka_ingest'}, 't'),
	'the ingest is running');
my $log_offset = -s $node->logfile;
my $taken = $node->safe_psql('postgres', q{SELECT events_processed FROM es_consumers WHERE name = 'kafka_ingest'});
kill 'KILL',
  $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'ultracore_es kafka ingest'
	   ORDER BY wait_event_type IS NOT DISTINCT FROM 'Lock' DESC LIMIT 1});
$node->wait_for_log(qr/all server processes terminated; reinitializing/, $log_offset);
eval { $holder->quit; };    # ended by the crash
ok($node->poll_query_until('postgres', 'SELECT true'), 'server back after kill -9 of an ingest worker');
cmp_ok($taken, '<', 10000, "killed in the middle of the ingest ($taken messages taken)");

# Done when the offsets stored for bank.in add up to what the brokers hold
# (the local Customer events included, once the mirror has sent them).
ok( $node->poll_query_until(
		'postgres', q{SELECT lag_events = 0 FROM es_kafka_status WHERE component = 'mirror'}, 't'),
	'the mirror caught up');
my $on_brokers = $kafka->messages('bank.in', 4);
is($on_brokers, 10000 + 10, 'bank.in holds the messages and the local Customer events');
ok( $node->poll_query_until(
		'postgres', qq{SELECT sum(next_offset) = $on_brokers FROM es_kafka_offsets WHERE topic = 'bank.in'}, 't'),
	'every message of bank.in taken');

is( $node->safe_psql('postgres', q{SELECT count(*) FROM es_events WHERE appended_by = 'kafka:bank.in'}),
	$valid + $any, "the valid messages appended ($valid versioned, $any at any version)");
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM es_events
	 WHERE aggregate_id LIKE 'IN-%'
	   AND event_id = 'in-' || substr(aggregate_id, 4) || '-' || version
	   AND data = jsonb_build_object('balance', version)
	   AND metadata->'kafka_origin'->>'topic' = 'bank.in'
	   AND correlation_id = 'corr-' || substr(aggregate_id, 4)}),
	$valid, 'each at the version its message named, with its id, data, origin and correlation');
is( $node->safe_psql('postgres', q{SELECT count(*) FROM es_aggregate_versions WHERE aggregate_id LIKE 'IN-%' AND version = 8}),
	1000, 'every account at version 8');
is( $node->safe_psql(
		'postgres', q{SELECT count(*) FROM es_events WHERE aggregate_id LIKE 'CUS-%' AND aggregate_type = 'Customer'}),
	$any, 'messages without a version or aggregate type appended');

my %dead = split /[|\n]/, $node->safe_psql(
	'postgres', q{
	SELECT CASE WHEN error LIKE '%version conflict%' THEN 'conflict'
	            WHEN error LIKE '%is not registered%' THEN 'unknown'
	            ELSE 'malformed' END, count(*)
	  FROM es_kafka_dead_letters GROUP BY 1 ORDER BY 1});
is($dead{conflict} // 0, $conflicts, 'version conflicts dead-lettered');
is($dead{unknown} // 0, $unknown, 'unknown event types dead-lettered');
is($dead{malformed} // 0, $malformed, 'malformed messages dead-lettered');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM es_kafka_dead_letters
	 WHERE headers->>'ce_id' LIKE 'in-%'
	    OR (topic, partition, "offset") IN (SELECT topic, partition, "offset" FROM es_kafka_dead_letters
	                                         GROUP BY 1, 2, 3 HAVING count(*) > 1)}),
	0, 'duplicates absorbed, not dead-lettered; no message dead-lettered twice');
like(
	$node->safe_psql('postgres', q{SELECT error FROM es_kafka_dead_letters WHERE headers->>'ce_id' = 'conflict-0'}),
	qr/IN-2/, 'a dead letter says what went wrong');

# What this store mirrored came back through es.Account and bank.in and was
# skipped; what it ingested from bank.in was not sent back there.
ok( $node->poll_query_until(
		'postgres', q{SELECT lag_events = 0 FROM es_kafka_status WHERE component = 'mirror'}, 't'),
	'the mirror caught up with the ingested events');
my @in = $kafka->consume('bank.in');
is(scalar(@in), 10000 + 10, 'bank.in holds the messages and the local Customer events, nothing ingested from it');
is(scalar(grep { ($_->{key} // '') =~ /^LOCAL-/ } @in), 10, 'the local Customer events went to bank.in');
my @mirrored = $kafka->consume('es.Account');
is(EsKafka::check_order(@mirrored), $valid, 'ingested Account events mirrored to es.Account, in order');
ok( $node->poll_query_until(
		'postgres', qq{
	SELECT sum(next_offset) FILTER (WHERE topic = 'bank.in') = @{[ scalar @in ]}
	   AND sum(next_offset) FILTER (WHERE topic = 'es.Account') = @{[ scalar @mirrored ]}
	  FROM es_kafka_offsets}, 't'),
	'the ingest consumed what the mirror produced');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FILTER (WHERE appended_by LIKE 'kafka:%'), count(*) FROM es_events}),
	join('|', $valid + $any, $valid + $any + 10), 'no mirrored event ingested back');
is($node->safe_psql('postgres', q{SELECT count(*) FROM es_kafka_dead_letters WHERE topic <> 'bank.in'}),
	0, 'nor dead-lettered');

# A lock timeout is not the message's fault: the batch is taken again
# once the lock is free, and nothing is dead-lettered.
$node->safe_psql('postgres', q{SELECT es_append('Account', 'LOCKED-1', 'ACCOUNT_OPENED', '{}', 0)});
my $before_lock = $node->safe_psql('postgres', 'SELECT clock_timestamp()');
$holder = $node->background_psql('postgres');
# A writer of the aggregate that has not ended holds its lock.
$holder->query_safe(q{BEGIN; SELECT es_append('Account', 'LOCKED-1', 'ACCOUNT_FROZEN', '{}', 1);});
$kafka->produce(
	[
		'bank.in', 'LOCKED-1',
		{ ce_id => 'locked-2', ce_type => 'ACCOUNT_BALANCE_UPDATED', ce_aggregatetype => 'Account', ce_aggregateversion => 2 },
		'{"balance": 2}'
	]);
ok( $node->poll_query_until(
		'postgres', qq{SELECT last_error LIKE '%lock timeout%' AND last_error_at > '$before_lock'
		                 FROM es_consumers WHERE name = 'kafka_ingest'}, 't'),
	'the ingest timed out on the locked aggregate');
$holder->query_safe('ROLLBACK');
$holder->quit;
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 1 FROM es_events WHERE event_id = 'locked-2' AND version = 2}, 't'),
	'appended once the lock is free');
is($node->safe_psql('postgres', q{SELECT count(*) FROM es_kafka_dead_letters WHERE headers->>'ce_id' = 'locked-2'}),
	0, 'not dead-lettered');

# An internal error (class XX) for one message, here from an inline
# projection's bug, is taken again a few times, then dead-lettered: the
# messages after it go on.
$node->safe_psql(
	'postgres', q{
	CREATE FUNCTION buggy(event es_events) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
	    IF event.data ? 'poison' THEN
	        RAISE EXCEPTION 'the projection broke' USING ERRCODE = 'XX000';
	    END IF;
	END $$;
	SELECT es_register_projection('buggy', 'buggy(es_events)', ARRAY['ACCOUNT_OPENED'], mode => 'inline');
});
$kafka->produce(
	map {
		[
			'bank.in', $_->[0],
			{ ce_id => lc $_->[0], ce_type => 'ACCOUNT_OPENED', ce_aggregatetype => 'Account', ce_aggregateversion => 1 },
			$_->[1]
		]
	} ([ 'POISON-1', '{"poison": true}' ], [ 'AFTER-POISON-1', '{"balance": 1}' ]));
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 1 FROM es_events WHERE event_id = 'after-poison-1'}, 't'),
	'the message after the one that failed internally is appended');
like(
	$node->safe_psql('postgres', q{SELECT error FROM es_kafka_dead_letters WHERE headers->>'ce_id' = 'poison-1'}),
	qr/internal error, 5 times in a row: .*the projection broke/,
	'the message that failed internally was tried again, then dead-lettered');
is($node->safe_psql('postgres', q{SELECT count(*) FROM es_events WHERE event_id = 'poison-1'}),
	'0', 'and not appended');
$node->safe_psql('postgres', q{SELECT es_unregister_projection('buggy')});

# Bytes that are not text of the database (here, not UTF-8) in the key,
# an attribute or the value: the message is dead-lettered, not stored as
# it came (a NUL would have cut the string short there), and the next
# one goes on; the dead letter's headers say "(binary)" for such a value.
$kafka->produce(
	[ 'bank.in', "BIN-KEY-\xff", { ce_id => 'bin-key', ce_type => 'ACCOUNT_OPENED', ce_aggregatetype => 'Account' }, '{}' ],
	[
		'bank.in', 'BIN-SUBJECT',
		{ ce_id => 'bin-subject', ce_type => 'ACCOUNT_OPENED', ce_aggregatetype => 'Account', ce_subject => "S-\xfe\xff" },
		'{}'
	],
	[
		'bank.in', 'BIN-VALUE', { ce_id => 'bin-value', ce_type => 'ACCOUNT_OPENED', ce_aggregatetype => 'Account' },
		qq({"name": "\xff"})
	],
	[ 'bank.in', 'AFTER-BIN', { ce_id => 'after-bin', ce_type => 'ACCOUNT_OPENED', ce_aggregatetype => 'Account' }, '{}' ]);
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 1 FROM es_events WHERE event_id = 'after-bin'}, 't'),
	'the message after bytes that are not text is appended');
is($node->safe_psql('postgres', q{SELECT count(*) FROM es_events WHERE event_id LIKE 'bin-%'}),
	'0', 'none of those stored');
is( $node->safe_psql(
		'postgres', q{
	SELECT string_agg(headers->>'ce_id' || ' ' || (error LIKE '%of the message is not text%'), ', ' ORDER BY headers->>'ce_id')
	  FROM es_kafka_dead_letters WHERE headers->>'ce_id' LIKE 'bin-%'}),
	'bin-key true, bin-subject true, bin-value true', 'each dead-lettered as not text');
is( $node->safe_psql('postgres', q{SELECT headers->>'ce_subject' FROM es_kafka_dead_letters WHERE headers->>'ce_id' = 'bin-subject'}),
	'(binary)', 'its header kept as "(binary)"');

# A batch that runs out of shared memory for the locks of its aggregates
# (one each, held until it commits, but for new aggregates;
# max_locks_per_transaction = 10 and max_connections = 20 make room for
# about 600) would run out again at every try: the next batches take half
# as many messages, until they fit.  The messages wait in Kafka while the
# server is down, so the first batches are large.
$node->safe_psql('postgres',
	q{SELECT count(es_append('Account', 'MANY-' || g, 'ACCOUNT_OPENED', '{"balance": 0}', 0)) FROM generate_series(1, 8000) g});
$node->stop;
$node->append_conf('postgresql.conf', "max_locks_per_transaction = 10\nmax_connections = 20\nultracore_es.kafka_ingest_batch_size = 5000");
$kafka->produce(
	map {
		[
			'bank.in', "MANY-$_",
			{
				ce_id => "many-$_",
				ce_type => 'ACCOUNT_BALANCE_UPDATED',
				ce_aggregatetype => 'Account',
				ce_aggregateversion => 2
			},
			'{"balance": 1}'
		]
	} 1 .. 8000);
$log_offset = -s $node->logfile;
$node->start;
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 8000 FROM es_events WHERE event_id LIKE 'many-%'}, 't'),
	'events of 8,000 aggregates in batches that ran out of lock memory: every one appended');
like(slurp_file($node->logfile, $log_offset),
	qr/a batch of \d+ messages ran out of memory; the ingest takes at most \d+ a batch from now on/,
	'the server log says the batches were halved');
is($node->safe_psql('postgres', q{SELECT count(*) FROM es_kafka_dead_letters WHERE headers->>'ce_id' LIKE 'many-%'}),
	'0', 'and none of their messages dead-lettered');

# The ingest workers sleep on their consumer's queue: a message is appended
# as it arrives, not at the next poll interval (ten minutes from here on,
# longer than poll_query_until waits).
$node->append_conf('postgresql.conf', "ultracore_es.worker_poll_interval = '10min'");
$node->reload;
sleep 2;    # for the workers to go to sleep with it
$kafka->produce(
	[
		'bank.in', 'LOCKED-1',
		{ ce_id => 'locked-3', ce_type => 'ACCOUNT_BALANCE_UPDATED', ce_aggregatetype => 'Account', ce_aggregateversion => 3 },
		'{"balance": 3}'
	]);
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 1 FROM es_events WHERE event_id = 'locked-3' AND version = 3}, 't'),
	'a message arriving wakes its ingest worker');

$node->stop;
$kafka->stop;
done_testing();
