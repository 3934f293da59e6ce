# A server whose settings name what does not exist yet starts quietly: a
# database of ultracore_es.database (and of ultracore_es.kafka_database) not
# created yet, ingest topics without brokers.  The launcher says so once in
# the log, starts no worker that could only fail (no FATAL every few
# seconds), and serves the database as soon as it has the extension.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/..";
use EsNode;

my $node = EsNode->new('quiet', q{
ultracore_es.database = 'later_db'
ultracore_es.kafka_ingest_topics = 'bank.in'
});
$node->start;

$node->wait_for_log(qr/database "later_db" of ultracore_es\.database does not exist/);
$node->wait_for_log(qr/ultracore_es\.kafka_ingest_topics is set but ultracore_es\.kafka_brokers is empty/);

# Time for workers that would fail to have failed a few times (they were
# restarted every 5 s); then the database arrives, and the launcher, woken
# by CREATE EXTENSION, starts its workers: it has been looking all along.
sleep 12;
$node->safe_psql('postgres', 'CREATE DATABASE later_db');
$node->safe_psql('later_db', 'CREATE EXTENSION ultracore_es');
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 2 FROM pg_stat_activity
		               WHERE backend_type = 'ultracore_es delivery' AND datname = 'later_db'}),
	'the database is served once it has the extension');
$node->safe_psql('later_db', q{
	CREATE TABLE seen (event_id text);
	CREATE FUNCTION see(event es_events) RETURNS void LANGUAGE sql AS 'INSERT INTO seen VALUES (event.event_id)';
	SELECT es_register_handler('see', 'see(es_events)');
	SELECT es_append('Customer', 'C-1', 'CUSTOMER_CREATED', '{}', 0);
});
ok($node->poll_query_until('later_db', q{SELECT count(*) = 1 FROM seen}), 'and its handlers run');

my $log = slurp_file($node->logfile);
my @missing = $log =~ /database "later_db" of ultracore_es\.database does not exist/g;
is(scalar(@missing), 1, 'the missing database was reported once');
my @brokers = $log =~ /kafka_ingest_topics is set but/g;
is(scalar(@brokers), 1, 'the missing brokers were reported once');
unlike($log, qr/FATAL/, 'no process failed');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'ultracore_es kafka%'}),
	'0', 'no Kafka worker started without brokers');

# A reload says it again, once.
$node->reload;
$node->wait_for_log(qr/kafka_ingest_topics is set but.*\n(?:.*\n)*.*kafka_ingest_topics is set but/);
pass('a reload reports the settings again');

$node->stop;
done_testing();
