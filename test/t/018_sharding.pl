# Sharding with PL/Proxy (sharding/ultracore_es_proxy.sql): a proxy database
# without the extension routes es_append, es_append_batch, es_get_events,
# es_load_aggregate and es_aggregate_version by the SHA-256 of aggregate_id to
# two shards, each a full ultracore_es mirroring to the same Kafka topics (the
# local test broker).  1,000 aggregates spread evenly, each on the shard the
# documented hash names and only there, read back whole through the proxy; a
# version conflict reaches the proxy's client as UE001 with its detail; a
# shard stopped fails its aggregates' calls with a clear error while the
# other goes on, and serves again once started; every event is on the topic,
# keyed by its aggregate.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Digest::SHA qw(sha256);
use FindBin;
use lib "$FindBin::RealBin/..";
use EsKafka;

my $proxy_sql = "$FindBin::RealBin/../../sharding/ultracore_es_proxy.sql";
my $aggregates = 1000;

my $kafka = EsKafka->new('es.Account:4');
my @shards;
foreach my $i (0, 1)
{
	# The workers (and the mirror) serve the shard's database, named for
	# the shard so that PL/Proxy's messages say which shard failed.
	my $shard = $kafka->node("shard_$i", "ultracore_es.database = 'shard_$i'\n");
	$shard->start;
	$shard->safe_psql('postgres', "CREATE DATABASE shard_$i");
	$shard->safe_psql("shard_$i", 'CREATE EXTENSION ultracore_es');
	push @shards, $shard;
}
sub shard_sql { my ($i, $sql) = @_; return $shards[$i]->safe_psql("shard_$i", $sql); }

my $proxy = PostgreSQL::Test::Cluster->new('proxy');
$proxy->init;
$proxy->start;
$proxy->safe_psql('postgres', 'CREATE DATABASE bank');
$proxy->safe_psql('bank', 'CREATE EXTENSION plproxy');
$proxy->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $proxy->connstr('bank'), '-f', $proxy_sql ],
	'sharding/ultracore_es_proxy.sql runs');
my $user = $proxy->safe_psql('bank', 'SELECT current_user');
$proxy->safe_psql(
	'bank', qq{
	CREATE SERVER ultracore_es_shards FOREIGN DATA WRAPPER plproxy OPTIONS (
	    p0 'host=@{[ $shards[0]->host ]} port=@{[ $shards[0]->port ]} dbname=shard_0',
	    p1 'host=@{[ $shards[1]->host ]} port=@{[ $shards[1]->port ]} dbname=shard_1');
	CREATE USER MAPPING FOR PUBLIC SERVER ultracore_es_shards OPTIONS (user '$user');
});

# The proxy's functions and types are the store's, to the last default:
# a signature changed in the extension and not here fails this.
my $signatures = q{
	SELECT string_agg(p.proname || '(' || pg_get_function_arguments(p.oid) || ') -> '
	                  || pg_get_function_result(p.oid), E'\n' ORDER BY p.proname)
	  FROM pg_proc p
	 WHERE p.proname IN ('es_append', 'es_append_batch', 'es_get_events', 'es_load_aggregate', 'es_aggregate_version')};
is($proxy->safe_psql('bank', $signatures), shard_sql(0, $signatures), 'the proxy has the store\'s signatures');
foreach my $type ('es_append_result', 'es_events', 'es_aggregate_state')
{
	my $columns = qq{
		SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod) || ' ' || coalesce(c.collname, '-'),
		                  ', ' ORDER BY attnum)
		  FROM pg_attribute a LEFT JOIN pg_collation c ON c.oid = a.attcollation
		 WHERE attrelid = '$type'::regclass AND attnum > 0 AND NOT attisdropped};
	is($proxy->safe_psql('bank', $columns), shard_sql(0, $columns), "$type has the store's columns");
}

# 1,000 aggregates through the proxy: an es_append, then a batch of two.
$proxy->safe_psql(
	'bank', qq{
	SELECT count(*) FROM (SELECT es_append('Account', 'ACC-' || g, 'ACCOUNT_OPENED', jsonb_build_object('n', g), 0)
	                        FROM generate_series(1, $aggregates) g) s;
	SELECT count(*) FROM (SELECT es_append_batch('Account', 'ACC-' || g,
	                               '[{"event_type": "ACCOUNT_BALANCE_UPDATED", "data": {"balance": 10}},
	                                 {"event_type": "ACCOUNT_BALANCE_UPDATED", "data": {"balance": 25}}]', 1)
	                        FROM generate_series(1, $aggregates) g) s;
});

# Where each aggregate is, and where the documented hash says it must be:
# the first 4 bytes of SHA-256 of the id, big-endian, & (shards - 1).
my %on;
foreach my $i (0, 1)
{
	foreach my $row (split /\n/, shard_sql($i, 'SELECT aggregate_id, max(version) FROM es_events GROUP BY 1'))
	{
		my ($id, $version) = split /\|/, $row;
		push @{ $on{$id} }, "$i:$version";
	}
}
my @counts = map { my $i = $_; scalar grep { $on{$_}[0] =~ /^$i:/ } keys %on } (0, 1);
cmp_ok(abs($counts[$_] - $aggregates / 2), '<=', $aggregates / 20, "shard $_ holds $counts[$_] aggregates, 500 +- 10%")
  foreach (0, 1);
is(scalar(keys %on), $aggregates, 'every aggregate is stored');
is(scalar(grep { @{ $on{$_} } != 1 } keys %on), 0, 'each on one shard only');
is(scalar(grep { $on{$_}[0] !~ /:3$/ } keys %on), 0, 'each with its three events');
my @misrouted = grep { $on{$_}[0] !~ /^@{[ unpack('l>', substr(sha256($_), 0, 4)) & 1 ]}:/ } keys %on;
is("@misrouted", '', 'each on the shard its SHA-256 names');

# Read back through the proxy: every event with every column, states, versions.
my $event_columns = q{aggregate_id, version, event_id, event_type, data, position, tx_id, encode(hash, 'hex')};
my $stored = join("\n",
	sort map { split /\n/, shard_sql($_, "SELECT concat_ws('|', $event_columns) FROM es_events") } (0, 1));
my $proxied = join("\n",
	sort split /\n/,
	$proxy->safe_psql(
		'bank', qq{SELECT concat_ws('|', $event_columns)
		             FROM generate_series(1, $aggregates) g, es_get_events('ACC-' || g)}));
is($proxied, $stored, 'es_get_events through the proxy returns every event of every aggregate');
is( $proxy->safe_psql(
		'bank', qq{SELECT count(*) FROM generate_series(1, $aggregates) g
		            WHERE es_aggregate_version('ACC-' || g) = 3
		              AND (es_load_aggregate('ACC-' || g)).state = jsonb_build_object('n', g, 'balance', 25)}),
	$aggregates, 'es_aggregate_version and es_load_aggregate through the proxy');
is( $proxy->safe_psql('bank', q{SELECT concat_ws('|', version, events_applied) FROM es_load_aggregate('ACC-7', at_version => 2)}),
	'2|2', 'es_load_aggregate at a version');
is($proxy->safe_psql('bank', q{SELECT es_aggregate_version('NOBODY')}), '0', 'an aggregate that does not exist');

my ($on0) = sort grep { $on{$_}[0] =~ /^0:/ } keys %on;
my ($on1) = sort grep { $on{$_}[0] =~ /^1:/ } keys %on;

# A version conflict reaches the proxy's client as UE001, with the
# shard's detail and hint.
foreach my $call (
	"es_append('Account', '$on1', 'ACCOUNT_BALANCE_UPDATED', '{}', 1)",
	"es_append_batch('Account', '$on1', '[{\"event_type\": \"ACCOUNT_BALANCE_UPDATED\"}]', 1)")
{
	my ($ret, $out, $err) = $proxy->psql('bank', "\\set VERBOSITY verbose\nSELECT * FROM $call");
	my ($function) = $call =~ /^(\w+)/;
	isnt($ret, 0, "$function conflict fails");
	like($err, qr/ERROR:  UE001: public\.$function\(\d+\): \[shard_1\] REMOTE ERROR: version conflict on aggregate "$on1"$/m,
		"$function conflict: SQLSTATE UE001 through the proxy");
	like($err, qr/^DETAIL:  Remote detail: Aggregate "$on1": expected version 1\b.*, actual version 3\.$/m,
		"$function conflict: the detail names the aggregate and both versions");
	like($err, qr/^HINT:  Remote hint: \S/m, "$function conflict: the hint");
}
is(shard_sql(1, qq{SELECT max(version) FROM es_events WHERE aggregate_id = '$on1'}), '3', 'nothing appended');

# A session that keeps its connections to the shards, as a pooled client
# would, before, during and after the outage.
my $session = $proxy->background_psql('bank', on_error_stop => 0);
$session->query_safe('\\set VERBOSITY verbose');
$session->query_safe("SELECT es_append('Account', '$on1', 'ACCOUNT_BALANCE_UPDATED', '{}', 3)");

# Shard 1 stopped: its aggregates' calls fail, saying which shard and why;
# shard 0's go on.
$shards[1]->stop('fast');
my ($ret, $out, $err) = $proxy->psql('bank',
	"\\set VERBOSITY verbose\nSELECT * FROM es_append('Account', '$on1', 'ACCOUNT_BALANCE_UPDATED', '{}', 4)");
isnt($ret, 0, 'an append to the stopped shard fails');
like( $err,
	qr/ERROR:  XX000: PL\/Proxy function public\.es_append\(10\): \[shard_1\] PQconnect\w+: connection to server .* failed/m,
	'the error names the shard that cannot be reached');
($ret, $out, $err) = $proxy->psql('bank', "SELECT count(*) FROM es_get_events('$on1')");
like($err, qr/\[shard_1\] PQconnect\w+: connection to server .* failed/, 'so does a read');
is( $proxy->safe_psql('bank', qq{SELECT version FROM es_append('Account', '$on0', 'ACCOUNT_BALANCE_UPDATED', '{}', 3)}),
	'4', 'an append to the other shard succeeds');
is($proxy->safe_psql('bank', qq{SELECT count(*) FROM es_get_events('$on0')}), '4', 'and reads from it');
# The kept session: the connection it had is gone.
$session->query("SELECT es_append('Account', '$on1', 'ACCOUNT_BALANCE_UPDATED', '{}', 4)");
like($session->{stderr}, qr/ERROR:.*\[shard_1\]/, 'the kept session fails on the stopped shard too');
$session->{stderr} = '';

# Started again: appends to it succeed, from new sessions and from the kept one.
$shards[1]->start;
is( $proxy->safe_psql('bank', qq{SELECT version FROM es_append('Account', '$on1', 'ACCOUNT_BALANCE_UPDATED', '{}', 4)}),
	'5', 'the shard started again: an append to it succeeds');
is($session->query("SELECT version FROM es_append('Account', '$on1', 'ACCOUNT_BALANCE_UPDATED', '{}', 5)"),
	'6', 'so does one from the kept session, on a new connection');
unlike($session->{stderr}, qr/ERROR/, 'without an error');

# A shard restarted while a session holds a connection to it: that
# session's next call may fail once (PL/Proxy checks a connection for a
# close only after 2 s unused: sooner, it sends the query on it and gets
# the shutdown's 57P01), and connects again for the call after it.
$shards[1]->restart;
$session->query("SELECT version FROM es_append('Account', '$on1', 'ACCOUNT_BALANCE_UPDATED', '{}', 6)");
my @errors = $session->{stderr} =~ /ERROR:  (.*)$/mg;
ok( !@errors || (@errors == 1 && $errors[0] =~ /^57P01: .*\[shard_1\] REMOTE FATAL: terminating connection due to administrator command/),
	'after a restart, a kept session fails at most once, with 57P01') or diag($session->{stderr});
$session->{stderr} = '';
my $expected = @errors ? 6 : 7;
is($session->query("SELECT version FROM es_append('Account', '$on1', 'ACCOUNT_BALANCE_UPDATED', '{}', $expected)"),
	$expected + 1, 'and its next append succeeds');
$session->quit;

# Both shards mirror to the same topic: every event is there once at least,
# keyed by its aggregate, in each aggregate's version order.
foreach my $i (0, 1)
{
	ok( $shards[$i]->poll_query_until("shard_$i", q{SELECT lag_events = 0 FROM es_kafka_status WHERE component = 'mirror'}),
		"shard $i: the mirror caught up");
}
my %aggregate_of = map { split /\|/ } map { split /\n/, shard_sql($_, q{SELECT event_id || '|' || aggregate_id FROM es_events}) } (0, 1);
my @messages = $kafka->consume('es.Account');
my $distinct = eval { EsKafka::check_order(@messages) };
is($@, '', 'per-aggregate order kept on the topic across the shards');
is($distinct, scalar(keys %aggregate_of), 'every event of both shards is on the topic (' . scalar(keys %aggregate_of) . ')');
is(scalar(grep { ($aggregate_of{ $_->{headers}{ce_id} } // '') ne $_->{key} } @messages), 0,
	'each keyed by its aggregate id');

$proxy->stop;
$_->stop foreach @shards;
$kafka->stop;
done_testing();
