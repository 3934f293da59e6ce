# pg_dump of a store, restored into another cluster: every event, aggregate,
# registered event type and the position sequence come back; appends after
# the restore land after the restored events in commit order (the store is
# re-based, src/core/store.c), so a reader's checkpoint from the old cluster stays
# valid on the new one.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $old = PostgreSQL::Test::Cluster->new('old_cluster');
$old->init;
$old->append_conf('postgresql.conf',
	"shared_preload_libraries = 'ultracore_es'\nultracore_es.worker_poll_interval = 200");
$old->start;
$old->safe_psql('postgres', q{
	CREATE EXTENSION ultracore_es;
	SELECT es_register_event_type('ACCOUNT_INTEREST_ACCRUED', 'Account', 'Interest accrued');
	CREATE TABLE handled (event_id text, aggregate_id text, version bigint);
	CREATE FUNCTION record(event es_events) RETURNS void LANGUAGE sql AS
	    'INSERT INTO handled VALUES (event.event_id, event.aggregate_id, event.version)';
	SELECT es_register_handler('record', 'record(es_events)');
	SELECT es_resume_handler('es_audit_trail');
	SELECT es_append('Account', 'ACC1', 'ACCOUNT_OPENED', '{}', 0);
	SELECT es_append('Account', 'ACC1', 'ACCOUNT_INTEREST_ACCRUED', '{"amount": 1}', 1);
});
# Burn transaction ids, so the old cluster's ids are well above the new one's.
$old->safe_psql('postgres', q{
	CREATE TABLE burn (i int);
	DO $$ BEGIN FOR i IN 1..3000 LOOP INSERT INTO burn VALUES (i); COMMIT; END LOOP; END $$;
});
$old->safe_psql('postgres', q{SELECT es_append('Account', 'ACC1', 'ACCOUNT_BALANCE_UPDATED', '{"balance": 10}', 2)});

# A reader's checkpoint at the last event of the old cluster.
my $checkpoint = $old->safe_psql('postgres',
	q{SELECT tx_id || ',' || position FROM es_read_all() ORDER BY tx_id DESC, position DESC LIMIT 1});
my ($ck_tx, $ck_pos) = split /,/, $checkpoint;
my $old_sysid = $old->safe_psql('postgres', 'SELECT system_identifier FROM es_clusters');
ok( $old->poll_query_until(
		'postgres', q{SELECT (SELECT count(*) FROM handled) = 3 AND (SELECT count(*) FROM es_audit_trail) = 3}),
	'handlers caught up before the dump');

my $dump = $PostgreSQL::Test::Utils::tmp_check . '/store.sql';
command_ok([ 'pg_dump', '-d', $old->connstr('postgres'), '-f', $dump ], 'pg_dump of the store');
$old->stop;

my $new = PostgreSQL::Test::Cluster->new('new_cluster');
$new->init;
$new->append_conf('postgresql.conf',
	"shared_preload_libraries = 'ultracore_es'\nultracore_es.worker_poll_interval = 200");
$new->start;
command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $new->connstr('postgres'), '-f', $dump ],
	'restore into another cluster');

isnt($new->safe_psql('postgres', 'SELECT system_identifier FROM pg_control_system()'), $old_sysid,
	'the new cluster has another identity');
is($new->safe_psql('postgres', q{SELECT count(*) FROM es_events}), '3', 'events restored');
is($new->safe_psql('postgres', q{SELECT es_aggregate_version('ACC1')}), '3', 'aggregate restored');
is($new->safe_psql('postgres', q{SELECT count(*) FROM es_event_types WHERE NOT builtin}), '1',
	'registered event type restored once');
ok( $new->safe_psql('postgres', q{SELECT count(*) FROM es_event_types}) >= 70,
	'built-in event types present once');
cmp_ok($new->safe_psql('postgres', 'SELECT pg_current_xact_id()'), '<', $ck_tx,
	'the new cluster counts transaction ids from lower down');

# Appends after the restore: versions continue, positions continue, and the
# events sort after the restored ones in commit order.
$new->safe_psql('postgres', q{
	SELECT es_append('Account', 'ACC1', 'ACCOUNT_BALANCE_UPDATED', '{"balance": 20}', 3);
	SELECT es_append('Account', 'ACC2', 'ACCOUNT_OPENED', '{}', 0);
});
is( $new->safe_psql(
		'postgres',
		q{SELECT string_agg((system_identifier = (SELECT system_identifier FROM pg_control_system()))::text
		                    || ':' || (xid_offset > 0)::text, ',' ORDER BY first_append_at) FROM es_clusters}),
	'false:false,true:true',
	'the new cluster recorded, with an offset');
is( $new->safe_psql(
		'postgres',
		"SELECT string_agg(aggregate_id || ' v' || version, ', ' ORDER BY tx_id, position) FROM es_read_all('$ck_tx', $ck_pos)"),
	'ACC1 v4, ACC2 v1',
	'the old checkpoint resumes on the new cluster without a gap');
is($new->safe_psql('postgres', q{SELECT count(DISTINCT position) = count(*) FROM es_events}), 't',
	'positions stay unique');
# Handlers come back with their checkpoints, built-in ones included: the new
# events are delivered, once, and the restored ones not again.
is( $new->safe_psql(
		'postgres', q{SELECT string_agg(handler || ':' || state, ',' ORDER BY handler) FROM es_handler_status
		               WHERE handler IN ('record', 'es_audit_trail')}),
	'es_audit_trail:running,record:running',
	'handlers restored, running');
ok( $new->poll_query_until(
		'postgres', q{SELECT (SELECT count(*) FROM handled) = 5 AND (SELECT count(*) FROM es_audit_trail) = 5}),
	'the new events delivered');
is( $new->safe_psql(
		'postgres', q{SELECT count(DISTINCT event_id) || ' ' || (SELECT count(*) FROM es_handled WHERE consumer = 'record')
		               FROM handled}),
	'5 5', 'and nothing delivered twice');
like($new->logfile && slurp_file($new->logfile), qr/event store moved to another cluster/,
	'the re-base is logged');

$new->stop;
done_testing();
