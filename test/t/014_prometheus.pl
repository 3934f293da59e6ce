# Prometheus: Debian's prometheus-postgres-exporter, started here on
# loopback with monitoring/postgres_exporter.yml against a store with a
# handler, the Kafka mirror and the ingest, scraped by HTTP as a Prometheus
# server would.  Its role is only a member of pg_monitor.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use HTTP::Tiny;
use IPC::Run;
use FindBin;
use lib "$FindBin::RealBin/..";
use EsKafka;

my $exporter = '/usr/bin/prometheus-postgres-exporter';    # Debian's package (test/lib.sh installs it)
my $queries = "$FindBin::RealBin/../../monitoring/postgres_exporter.yml";

my $kafka = EsKafka->new('bank.in:1', 'es.Account:1');
my $node = $kafka->node('prometheus', q{
ultracore_es.kafka_ingest_topics = 'bank.in'
ultracore_es.kafka_consumer_properties = 'session.timeout.ms=6000;heartbeat.interval.ms=500'
});
$node->start;
$node->safe_psql(
	'postgres', q{
	CREATE EXTENSION ultracore_es;
	CREATE ROLE regress_monitor LOGIN IN ROLE pg_monitor;
	CREATE TABLE seen (event_id text);
	CREATE FUNCTION see(event es_events) RETURNS void LANGUAGE sql AS 'INSERT INTO seen VALUES (event.event_id)';
	SELECT es_register_handler('see', 'see(es_events)');
	SELECT es_append('Account', 'PROM-' || i, 'ACCOUNT_OPENED', '{}', 0) FROM generate_series(1, 20) i;
});
$kafka->produce(
	[ 'bank.in', 'IN-1', { ce_id => 'in-1', ce_type => 'ACCOUNT_OPENED', ce_aggregatetype => 'Account' }, '{}' ]);
ok($node->poll_query_until('postgres', q{SELECT count(*) = 21 FROM seen}), 'the handler caught up');

my $port = PostgreSQL::Test::Cluster::get_free_port();
my ($out, $err) = ('', '');
my $h = IPC::Run::start(
	[
		$exporter, "--extend.query-path=$queries", "--web.listen-address=127.0.0.1:$port",
		'--disable-default-metrics', '--disable-settings-metrics', '--log.level=warn'
	],
	'>', \$out, '2>', \$err,
	init => sub {
		$ENV{DATA_SOURCE_NAME} =
		  'host=' . $node->host . ' port=' . $node->port . ' dbname=postgres user=regress_monitor sslmode=disable';
	});

# Metrics as Prometheus sees them: name{labels} value.
sub scrape
{
	my $response;
	for (1 .. 100)
	{
		$response = HTTP::Tiny->new(timeout => 10)->get("http://127.0.0.1:$port/metrics");
		last if $response->{success} && $response->{content} =~ /^ultracore_es_store_events_appended_total/m;
		select(undef, undef, undef, 0.1);
	}
	return '' unless $response->{success};
	# Without the exporter's server label: name{labels} value.
	return $response->{content} =~ s/,?server="[^"]*"//gr =~ s/\{,/{/gr =~ s/\{\}//gr;
}
sub metric
{
	my ($metrics, $pattern) = @_;
	return $metrics =~ /^$pattern (\S+)$/m ? $1 + 0 : undef;
}

my $metrics = scrape();
ok($metrics, 'the exporter serves metrics') or diag($err);
unlike($metrics, qr/^pg_exporter_last_scrape_error 1/m, 'no query of the file failed') or diag($err);
cmp_ok(metric($metrics, 'ultracore_es_store_events_appended_total'), '>=', 21, 'events appended, a counter');
is(metric($metrics, 'ultracore_es_consumer_lag_events\{consumer="see",kind="handler"\}'), 0, 'a consumer\'s lag');
is(metric($metrics, 'ultracore_es_consumer_paused\{consumer="see",kind="handler"\}'), 0, 'not paused');
is(metric($metrics, 'ultracore_es_consumer_state_info\{consumer="see",state="running"\}'), 1, 'its state, apart');
ok(defined metric($metrics, 'ultracore_es_kafka_mirror_lag_events'), 'the mirror\'s lag');
ok(defined metric($metrics, 'ultracore_es_kafka_ingest_consumer_lag\{partition="0",topic="bank.in"\}'),
	'the ingest\'s lag, per partition');
ok(defined metric($metrics, 'ultracore_es_horizon_age_seconds'), 'the commit horizon\'s age');
ok(defined metric($metrics, 'ultracore_es_health_level\{component="handler see",status="ok"\}')
	  || $metrics =~ /^ultracore_es_health_level\{component="[^"]*see[^"]*",status="ok"\} 0$/m,
	'es_health, a level per component')
  or diag(join("\n", grep { /^ultracore_es_health/ } split /\n/, $metrics));
is(metric($metrics, 'ultracore_es_store_dead_letters'), 0, 'no dead letters');

# Live: a paused handler's lag grows, an open appending transaction holds the horizon.
$node->safe_psql('postgres', q{
	SELECT es_pause_handler('see');
	SELECT es_append('Account', 'PROM-LATE-' || i, 'ACCOUNT_OPENED', '{}', 0) FROM generate_series(1, 5) i;
});
my $open = $node->background_psql('postgres');
$open->query_safe(q{BEGIN; SELECT es_append('Account', 'PROM-OPEN', 'ACCOUNT_OPENED', '{}', 0)});
sleep 1;
$metrics = scrape();
is(metric($metrics, 'ultracore_es_consumer_lag_events\{consumer="see",kind="handler"\}'),
	5, 'a paused handler\'s lag, scraped again');
is(metric($metrics, 'ultracore_es_consumer_state_info\{consumer="see",state="paused"\}'), 1, 'its state');
is(metric($metrics, 'ultracore_es_horizon_holders'), 1, 'the transaction holding the horizon');
cmp_ok(metric($metrics, 'ultracore_es_horizon_age_seconds'), '>=', 1, 'for a second or more');
$open->query_safe('COMMIT');
$open->quit;

$h->kill_kill;
$node->stop;
$kafka->stop;
done_testing();
