# CloudEvents conformance, checked by the CloudEvents JavaScript SDK with
# kafkajs (test/cloudevents/check.js, installed from the npm registry here)
# as a consumer of the mirror and a producer for the ingest, and by hand:
# ce_time in RFC 3339 UTC whatever the server's time zone, a ce_source that
# is a URI reference for a database named "Kunden Daten", the ingest's
# identity of an event as source and id, an event without data, data that is
# not JSON, other spec versions, structured mode and batches.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use FindBin;
use lib "$FindBin::RealBin/..";
use EsKafka;

my $db = 'Kunden Daten';
my $kafka = EsKafka->new('ce.in:1', 'es.Account:1');
my $node = $kafka->node('cloudevents', qq{
ultracore_es.database = '$db'
ultracore_es.kafka_database = '$db'
ultracore_es.kafka_ingest_topics = 'ce.in'
ultracore_es.kafka_consumer_properties = 'session.timeout.ms=6000;heartbeat.interval.ms=500'
timezone = 'Europe/Amsterdam'
});
$node->start;
$node->safe_psql('postgres', qq{CREATE DATABASE "$db"});
$node->safe_psql($db, 'CREATE EXTENSION ultracore_es');
my $own = '/ultracore_es/'
  . $node->safe_psql('postgres', 'SELECT system_identifier FROM pg_control_system()') . '/Kunden%20Daten';

# The SDK and kafkajs, at the versions of package-lock.json.
my $sdk = "$FindBin::RealBin/../cloudevents";
my ($out, $err);
ok( IPC::Run::run([ 'npm', 'ci', '--no-audit', '--no-fund', '--prefix', $sdk ],
		'>', \$out, '2>', \$err, init => sub { $ENV{npm_config_cache} = PostgreSQL::Test::Utils::tempdir . '/npm' }),
	'the CloudEvents SDK and kafkajs installed from the npm registry')
  or do
{
	diag("npm ci: $err");
	$node->stop;
	$kafka->stop;
	done_testing();
	exit;
};

sub node_check
{
	my (@args) = @_;
	my ($stdout, $stderr);
	IPC::Run::run([ 'node', "$sdk/check.js", @args, ], '>', \$stdout, '2>', \$stderr)
	  or diag("check.js @args: $stderr");
	return split /\n/, $stdout;
}

# Events of this store, at times its time zone writes oddly (Amsterdam's
# local mean time of 1900 is +00:19:32).
$node->safe_psql(
	$db, q{
	SELECT es_append('Account', 'LOCAL-1', 'ACCOUNT_OPENED', '{}', 0, occurred_at => '1900-06-01 12:19:32');
	SELECT es_append('Account', 'LOCAL-2', 'ACCOUNT_OPENED', '{}', 0, occurred_at => '2026-12-06 10:00:00.123456+01');
});

# Messages for the ingest, made by hand.
my %account = (ce_type => 'ACCOUNT_OPENED', ce_aggregatetype => 'Account', ce_aggregateversion => 1);
$kafka->produce(
	[ 'ce.in', 'CRM-A', { %account, ce_specversion => '1.0', ce_id => 'crm-2', ce_source => '/crm' }, '{"balance": 1}' ],
	# another source reusing the id, with the same content: another event
	[ 'ce.in', 'CRM-A', { %account, ce_specversion => '1.0', ce_id => 'crm-2', ce_source => '/other-bank' }, '{"balance": 1}' ],
	# the first again (a producer's retry): the same event
	[ 'ce.in', 'CRM-A', { %account, ce_specversion => '1.0', ce_id => 'crm-2', ce_source => '/crm' }, '{"balance": 1}' ],
	[ 'ce.in', 'V03-1', { %account, ce_specversion => '0.3', ce_id => 'v03-1', ce_source => '/crm' }, '{}' ],
	[ 'ce.in', 'TXT-1', { %account, ce_id => 'txt-1', ce_source => '/crm', 'content-type' => 'text/plain' }, '{"balance": 3}' ],
	[ 'ce.in', 'NODATA-1', { %account, ce_specversion => '1.0', ce_id => 'nodata-1', ce_source => '/crm' }, '' ],
	[ 'ce.in', 'FAR-1', { %account, ce_id => 'far-1', ce_source => '/crm', ce_time => '10000-01-01T00:00:00Z' }, '{}' ],
	[
		'ce.in', 'ST-1', { 'content-type' => 'application/cloudevents+json; charset=utf-8' },
		'{"specversion": "1.0", "id": "st-1", "source": "/crm", "type": "ACCOUNT_OPENED", "subject": "ST-1",'
		  . ' "time": "2026-12-06T10:00:00+01:00", "aggregatetype": "Account", "aggregateversion": 1,'
		  . ' "datacontenttype": "application/json", "data": {"balance": 5}}'
	],
	[
		'ce.in', 'ST-2', { 'content-type' => 'application/cloudevents+json' },
		'{"id": "st-2", "source": "/crm", "type": "ACCOUNT_OPENED", "aggregatetype": "Account", "data": {}}'
	],
	[ 'ce.in', 'BATCH-1', { 'content-type' => 'application/cloudevents-batch+json' }, '[]' ]);

# And by the SDK: a binary and a structured event.
my %produced = map { /^produced (\S+) (\S+) (\S+) (\S+)$/ ? ($1 => { id => $2, subject => $3, time => $4 }) : () }
  node_check('produce', $kafka->bootstrap, 'ce.in');
is(scalar(keys %produced), 2, 'the SDK produced a binary and a structured event');

ok( $node->poll_query_until(
		$db, q{SELECT count(*) = 6 FROM es_kafka_dead_letters}),
	'the ingest went through the messages');
ok($node->poll_query_until($db, q{SELECT count(*) = 7 FROM es_events}), 'and appended the others');

my %dead = map { split /\|/, $_, 2 } split /\n/,
  $node->safe_psql($db, q{SELECT coalesce(headers->>'ce_id', key::text), error FROM es_kafka_dead_letters});
like($dead{'crm-2'}, qr/event id "crm-2" is already used by another event/,
	'an event of another source reusing an id is not absorbed as a duplicate');
like($dead{'v03-1'}, qr/specversion "0\.3" is not supported/, 'another spec version is refused');
like($dead{'txt-1'}, qr{data of content type text/plain is not supported}, 'data that is not JSON is refused, even if it parses');
like($dead{'far-1'}, qr/out of range/, 'a time RFC 3339 cannot say is refused');
like($dead{'\x53542d32'}, qr/structured CloudEvent has no "specversion" attribute/, 'a structured event without specversion is refused');
like(join(' ', values %dead), qr/batched CloudEvents .* are not supported/, 'batches are refused');
is( $node->safe_psql(
		$db, q{
	SELECT string_agg(event_id || ' ' || data::text || ' ' || coalesce(metadata->'kafka_origin'->>'source', '-'), ', ' ORDER BY event_id)
	  FROM es_events WHERE appended_by LIKE 'kafka:%' AND metadata->'kafka_origin'->>'source' <> '/node-sdk/teller'}),
	'crm-2 {"balance": 1} /crm, nodata-1 {} /crm, st-1 {"balance": 5} /crm',
	'the ingested events keep their source; an event without data has {}; structured mode read');
is($node->safe_psql($db, q{SELECT occurred_at AT TIME ZONE 'UTC' FROM es_events WHERE event_id = 'st-1'}),
	'2026-12-06 09:00:00', 'structured mode: the time');
foreach my $m (sort keys %produced)
{
	is( $node->safe_psql(
			$db, qq{
		SELECT aggregate_id || ' ' || (occurred_at = '$produced{$m}{time}'::timestamptz) || ' '
		       || (metadata->'kafka_origin'->>'source') || ' ' || (data->>'balance')
		  FROM es_events WHERE event_id = '$produced{$m}{id}'}),
		"$produced{$m}{subject} true /node-sdk/teller " . ($m eq 'binary' ? 10 : 20),
		"the SDK's $m event ingested");
}

# What the mirror sent, read with kcat.
ok($node->poll_query_until($db, q{SELECT lag_events = 0 FROM es_kafka_status WHERE component = 'mirror'}),
	'the mirror caught up');
my @mirrored = $kafka->consume('es.Account');
is(scalar(@mirrored), 7, 'every Account event mirrored');
my %by_id = map { $_->{headers}{ce_id} => $_->{headers} } @mirrored;
is($by_id{ $node->safe_psql($db, q{SELECT event_id FROM es_events WHERE aggregate_id = 'LOCAL-1'}) }{ce_time},
	'1900-06-01T12:00:00Z', 'ce_time in UTC, not in the local mean time of the server\'s zone');
is($by_id{ $node->safe_psql($db, q{SELECT event_id FROM es_events WHERE aggregate_id = 'LOCAL-2'}) }{ce_time},
	'2026-12-06T09:00:00.123456Z', 'with microseconds');
is(scalar(grep { $_->{headers}{ce_time} !~ /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z$/ } @mirrored),
	0, 'every ce_time RFC 3339 in UTC');
is(join(' ', map { $by_id{$_}{ce_source} } 'crm-2', $produced{binary}{id}), '/crm /node-sdk/teller',
	'an ingested event is sent on with its own source');
is($by_id{'crm-2'}{ce_mirroredby}, $own, 'and says which store sent it on');
is(scalar(grep { !$_->{headers}{ce_source} || ($_->{headers}{ce_source} ne $own && $_->{key} =~ /^LOCAL-/) } @mirrored),
	0, "the store's own source is a URI reference: $own");

# W3C trace context, end to end: set by the appending session, sent as the
# CloudEvents distributed tracing extension and as plain traceparent; taken
# from a message on ingest; in the event row a handler gets.
my $tp_out = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
my $tp_in = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
$node->safe_psql(
	$db, qq{
	CREATE TABLE traced (event_id text, traceparent text);
	CREATE FUNCTION trace(event es_events) RETURNS void LANGUAGE sql
	    AS 'INSERT INTO traced VALUES (event.event_id, event.metadata->>''traceparent'')';
	SELECT es_register_handler('trace', 'trace(es_events)');
	BEGIN;
	SET LOCAL ultracore_es.traceparent = '$tp_out';
	SET LOCAL ultracore_es.tracestate = 'bank=teller-7';
	SELECT es_append('Account', 'TRACE-OUT', 'ACCOUNT_OPENED', '{}', 0, event_id => 'trace-out');
	COMMIT;
});
$kafka->produce(
	[ 'ce.in', 'TRACE-IN', { %account, ce_id => 'trace-in', ce_source => '/crm', ce_traceparent => $tp_in }, '{}' ]);
ok($node->poll_query_until($db, q{SELECT count(*) = 2 FROM traced}), 'the handler got both events');
is( $node->safe_psql($db, q{SELECT string_agg(event_id || ' ' || traceparent, ', ' ORDER BY event_id) FROM traced}),
	"trace-in $tp_in, trace-out $tp_out", 'with their traceparent, set by the session or taken from the message');
ok($node->poll_query_until($db, q{SELECT lag_events = 0 FROM es_kafka_status WHERE component = 'mirror'}),
	'the mirror caught up again');
my ($traced) = grep { $_->{headers}{ce_id} eq 'trace-out' } $kafka->consume('es.Account');
is(join(' ', map { $traced->{headers}{$_} // '-' } qw(ce_traceparent traceparent ce_tracestate tracestate)),
	"$tp_out $tp_out bank=teller-7 bank=teller-7", 'the trace context mirrored as ce_traceparent and traceparent');
@mirrored = $kafka->consume('es.Account');

# The SDK reads every mirrored message as a valid CloudEvent.
my @checked = node_check('validate', $kafka->bootstrap, 'es.Account', scalar(@mirrored));
is(scalar(grep { /^valid / } @checked), scalar(@mirrored), 'the SDK validates every mirrored message')
  or diag(join("\n", @checked));

$node->stop;
$kafka->stop;
done_testing();
