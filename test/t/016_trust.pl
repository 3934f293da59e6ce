# Trust and privacy on a running server: personal data never reaches the
# data directory or the WAL in the clear, before or after es_forget; what
# the mirror sends of it (encrypted, omit, plain); master key rotation and
# the refusals of bad key files; a digest that still verifies after pg_dump
# and a restore into another cluster, and finds a superuser's delete there.
use strict;
use warnings;
use File::Find;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use lib 'test';
use EsKafka;
use EsNode;

my $tmp = PostgreSQL::Test::Utils::tempdir();

sub key_file
{
	my ($name, $bytes, $mode) = @_;
	my $path = "$tmp/$name";
	open(my $f, '<', '/dev/urandom') or die "/dev/urandom: $!";
	read($f, my $key, $bytes) == $bytes or die "short read";
	close $f;
	open(my $out, '>', $path) or die "$path: $!";
	binmode $out;
	print $out $key;
	close $out;
	chmod($mode // 0600, $path) or die "chmod $path: $!";
	return $path;
}

my $key1 = key_file('master1.key', 32);
my $kafka = EsKafka->new('es.Customer:1');
my $node = $kafka->node('trust', qq{
ultracore_es.master_key_file = '$key1'
ultracore_es.kafka_batch_size = 100
});
$node->start;

sub set_and_reload
{
	my ($settings) = @_;
	$node->safe_psql('postgres', $settings . 'SELECT pg_reload_conf();');
	# A new session reads the reloaded file.
	sleep 1;
	return;
}

my $secret = 'Zebulon Quartzfeather';
my $mail = 'zq.7d1f@example.org';
my $marker = 'segment-4b6e-not-personal';
$node->safe_psql(
	'postgres', qq{
	CREATE EXTENSION ultracore_es;
	SELECT es_register_personal_data('CUSTOMER_CREATED', ARRAY['name', 'email', 'address']);
	SELECT es_register_personal_data('CUSTOMER_UPDATED', ARRAY['name', 'email', 'phone']);
	SELECT es_register_projection('es_customers', mode => 'inline');
	SELECT es_set_snapshot_policy('Customer', 1);
	SELECT es_append('Customer', 'C-1', 'CUSTOMER_CREATED',
	                 '{"name": "$secret", "email": "$mail", "segment": "$marker"}', 0);
	SELECT es_append('Customer', 'C-1', 'CUSTOMER_UPDATED', '{"phone": "+61 2 5550 7777"}', 1);
	SELECT es_append('Customer', 'C-2', 'CUSTOMER_CREATED', '{"name": "Orla Vantablack"}', 0);
});

# The files of base/ and pg_wal/ that hold the bytes of $needle.
sub files_holding
{
	my ($needle) = @_;
	my @found;
	$node->safe_psql('postgres', 'CHECKPOINT');
	find(
		sub {
			return unless -f $_;
			open(my $f, '<', $_) or return;
			binmode $f;
			local $/;
			my $content = <$f>;
			close $f;
			push @found, $File::Find::name if index($content, $needle) >= 0;
		},
		$node->data_dir . '/base',
		$node->data_dir . '/pg_wal');
	return @found;
}

ok(scalar(files_holding($marker)) > 0, 'the search finds a field that is not personal (it works)');
is(join(', ', files_holding($secret), files_holding($mail), files_holding('5550 7777')), '',
	'no personal value in base/ or pg_wal/');
is($node->safe_psql('postgres', q{SELECT data ->> 'name' FROM es_get_events('C-1') WHERE version = 1}),
	$secret, 'reads reveal it');
is($node->safe_psql('postgres', q{SELECT name || ' ' || phone FROM es_customers WHERE customer_id = 'C-1'}),
	"$secret +61 2 5550 7777", 'the read model view reveals it');
is($node->safe_psql('postgres', q{SELECT state ->> 'email' FROM es_load_aggregate('C-1')}),
	$mail, 'a load from a sealed snapshot reveals it');

# The mirror: sealed by default, with the subject in a header; then left
# out; then in the clear, when an operator says so.
sub mirrored
{
	my ($id) = @_;
	ok( $node->poll_query_until(
			'postgres', q{SELECT lag_events = 0 FROM es_kafka_status WHERE component = 'mirror'}, 't'),
		"the mirror sent $id");
	my ($m) = grep { $_->{key} eq $id } $kafka->consume('es.Customer');
	return $m;
}
my $m = mirrored('C-2');
unlike($m->{value}, qr/Orla/, 'encrypted (the default): no plaintext on Kafka');
like($m->{value}, qr/"name": "es1:/, 'encrypted: the sealed value');
is($m->{headers}{ce_personaldatasubject}, 'C-2', 'encrypted: whose key, in a header');
set_and_reload(q{ALTER SYSTEM SET ultracore_es.kafka_personal_data = 'omit';});
$node->safe_psql('postgres',
	q{SELECT es_append('Customer', 'C-3', 'CUSTOMER_CREATED', '{"name": "Ivo Plain", "segment": "x"}', 0)});
$m = mirrored('C-3');
is($m->{value}, '{"segment": "x"}', 'omit: the personal fields left out');
set_and_reload(q{ALTER SYSTEM SET ultracore_es.kafka_personal_data = 'plain';});
$node->safe_psql('postgres', q{SELECT es_append('Customer', 'C-4', 'CUSTOMER_CREATED', '{"name": "Ivo Plain"}', 0)});
$m = mirrored('C-4');
is($m->{value}, '{"name": "Ivo Plain"}', 'plain: in the clear, when chosen');

# Forgetting: null everywhere, still nothing in the clear, history intact.
is($node->safe_psql('postgres', q{SELECT es_forget('C-1')}), 't', 'es_forget destroys the key');
is( $node->safe_psql(
		'postgres', q{
	SELECT (SELECT string_agg(coalesce(data ->> 'name', 'null') || '/' || coalesce(data ->> 'phone', 'null'), ',' ORDER BY version)
	          FROM es_get_events('C-1'))
	       || ' ' || (SELECT coalesce(name, 'null') || '/' || coalesce(email, 'null') FROM es_customers WHERE customer_id = 'C-1')
	       || ' ' || (SELECT coalesce(state ->> 'name', 'null') || '/' || (state ->> 'segment') FROM es_load_aggregate('C-1'))
	       || ' ' || (SELECT count(*) FROM es_get_snapshot('C-1') WHERE state IS NOT NULL)}),
	"null/null,null/null null/null null/$marker 0",
	'forgotten: null in events, read model, load and snapshot; other fields kept');
is(join(', ', files_holding($secret), files_holding($mail)), '', 'still nothing in the clear after forgetting');
is($node->safe_psql('postgres', q{SELECT count(*) FROM es_verify()}), '0', 'the history verifies after forgetting');

# Master key rotation: the new key with the old one as previous, then a
# re-wrap; everything stays readable, and the old key is no longer needed.
my $key2 = key_file('master2.key', 64);
set_and_reload(qq{ALTER SYSTEM SET ultracore_es.master_key_file = '$key2';
	ALTER SYSTEM SET ultracore_es.previous_master_key_file = '$key1';});
is($node->safe_psql('postgres', q{SELECT data ->> 'name' FROM es_get_events('C-2')}),
	'Orla Vantablack', 'during the rotation: keys wrapped by the previous master key unwrap');
is($node->safe_psql('postgres', q{SELECT es_rewrap_subject_keys()}), '3', 'three subject keys re-wrapped');
is($node->safe_psql('postgres', q{SELECT es_rewrap_subject_keys()}), '0', 're-wrapping again: none left');
set_and_reload(q{ALTER SYSTEM RESET ultracore_es.previous_master_key_file;});
is( $node->safe_psql(
		'postgres', q{
	SELECT (SELECT data ->> 'name' FROM es_get_events('C-2')) || ' ' || (SELECT name FROM es_customers WHERE customer_id = 'C-3')
	       || ' ' || (SELECT count(DISTINCT master_key_id) FROM es_subject_keys WHERE wrapped_key IS NOT NULL)}),
	'Orla Vantablack Ivo Plain 1', 'after the rotation: readable with the new master key alone');

# Another master key, without the one that wrapped the keys: refused clearly.
my $key3 = key_file('master3.key', 32);
set_and_reload(qq{ALTER SYSTEM SET ultracore_es.master_key_file = '$key3';});
my ($rc, $out, $err) = $node->psql('postgres', q{SELECT data FROM es_get_events('C-2')});
like($err, qr/wrapped by master key [0-9a-f]{16}, which is not configured/, 'a wrong master key: a clear error');
my $short = key_file('short.key', 5);
set_and_reload(qq{ALTER SYSTEM SET ultracore_es.master_key_file = '$short';});
($rc, $out, $err) = $node->psql('postgres', q{SELECT es_register_personal_data('CUSTOMER_UPDATED', ARRAY['name'])});
like($err, qr/holds 5 bytes.*head -c 32 \/dev\/urandom/s, 'a short key file: refused, with how to make one');
my $open = key_file('open.key', 32, 0644);
set_and_reload(qq{ALTER SYSTEM SET ultracore_es.master_key_file = '$open';});
($rc, $out, $err) = $node->psql('postgres', q{SELECT data FROM es_get_events('C-2')});
like($err, qr/has group or world access/, 'a key file others can read: refused');
set_and_reload(qq{ALTER SYSTEM SET ultracore_es.master_key_file = '$key2';});

# A digest kept outside; pg_dump; a restore into another cluster verifies.
my $digest = $node->safe_psql('postgres', q{SELECT es_digest()});
my $dump = "$tmp/trust.sql";
command_ok([ 'pg_dump', '-d', $node->connstr('postgres'), '-f', $dump ], 'pg_dump of the store');
$node->stop;
$kafka->stop;

my $restored = EsNode->new('trust_restored', "ultracore_es.master_key_file = '$key2'\n");
$restored->start;
command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $restored->connstr('postgres'), '-f', $dump ],
	'restore into another cluster');
is($restored->safe_psql('postgres', qq{SELECT count(*) FROM es_verify(digest => '$digest')}), '0',
	'the restored store verifies against the digest');
is( $restored->safe_psql(
		'postgres', q{SELECT (SELECT data ->> 'name' FROM es_get_events('C-2'))
		                     || ' ' || coalesce((SELECT data ->> 'name' FROM es_get_events('C-1') WHERE version = 1), 'null')}),
	'Orla Vantablack null', 'restored: readable with the master key, forgotten stays forgotten');
$restored->safe_psql(
	'postgres', q{
	ALTER TABLE es_events DISABLE TRIGGER es_events_append_only;
	DELETE FROM es_events WHERE aggregate_id = 'C-2';
	DELETE FROM es_aggregates WHERE aggregate_id = 'C-2';
	DELETE FROM es_ledger_blocks;
	ALTER TABLE es_events ENABLE ALWAYS TRIGGER es_events_append_only;
});
is($restored->safe_psql('postgres', q{SELECT count(*) FROM es_verify()}), '0',
	'a whole aggregate and the blocks deleted: nothing inside tells');
like($restored->safe_psql('postgres', qq{SELECT problem FROM es_verify(digest => '$digest')}),
	qr/^the digest no longer adds up: \d+ events below its horizon, \d+ sealed$/, 'the digest tells');
$restored->stop;

done_testing();
