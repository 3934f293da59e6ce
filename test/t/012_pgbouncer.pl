# Through PgBouncer in transaction mode, with psycopg 3 as the client
# (test/drivers/psycopg_pgbouncer.py): concurrent appends, conflicts caught
# by SQLSTATE, idempotent resends, es_read_all paged with a checkpoint kept
# as a Python int; the handler sees every event once.  Debian's pgbouncer,
# started here on loopback.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use FindBin;
use lib "$FindBin::RealBin/..";
use EsNode;

my $pgbouncer = '/usr/sbin/pgbouncer';    # Debian's package pgbouncer (test/lib.sh installs it)

my $node = EsNode->new('bouncer');
$node->start;
$node->safe_psql(
	'postgres', q{
	CREATE EXTENSION ultracore_es;
	CREATE TABLE seen (event_id text);
	CREATE FUNCTION see(event es_events) RETURNS void LANGUAGE sql AS 'INSERT INTO seen VALUES (event.event_id)';
	SELECT es_register_handler('see', 'see(es_events)');
});
my $user = $node->safe_psql('postgres', 'SELECT current_user');

my $dir = PostgreSQL::Test::Utils::tempdir;
my $port = PostgreSQL::Test::Cluster::get_free_port();
append_to_file("$dir/userlist.txt", qq{"$user" ""\n});
append_to_file(
	"$dir/pgbouncer.ini", qq{
[databases]
postgres = host=@{[ $node->host ]} port=@{[ $node->port ]} dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = 2
max_client_conn = 50
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
});
my $bouncer = IPC::Run::start([ $pgbouncer, "$dir/pgbouncer.ini" ], '>', \my $out, '2>', \my $err);
my $conninfo = "host=127.0.0.1 port=$port dbname=postgres user=$user";
my $up = 0;
for (1 .. 100)
{
	$up = IPC::Run::run([ 'psql', '-XAtq', '-d', $conninfo, '-c', 'SELECT 1' ], '>', \my $o, '2>', \my $e);
	last if $up;
	select(undef, undef, undef, 0.1);
}
ok($up, 'pgbouncer accepts connections') or diag(slurp_file("$dir/pgbouncer.log"));

# Two server connections for four writers: their transactions share them.
my ($stdout, $stderr);
IPC::Run::run([ 'python3', "$FindBin::RealBin/../drivers/psycopg_pgbouncer.py", $conninfo ],
	'>', \$stdout, '2>', \$stderr);
diag($stderr) if $stderr;
my @lines = split /\n/, $stdout;
my ($events) = map { /^events (\d+)/ ? $1 : () } @lines;
foreach my $line (grep { /^(not )?ok / } @lines)
{
	my ($not, $what) = $line =~ /^(not )?ok (.*)$/;
	ok(!$not, "psycopg: $what");
}
cmp_ok(scalar(grep { /^(not )?ok / } @lines), '>=', 6, 'every check of the client ran');
is( $node->safe_psql(
		'postgres', q{SELECT count(*) || ' ' || count(DISTINCT aggregate_id) || ' ' || max(version)
		               FROM es_events WHERE event_id LIKE 'pgb-%'}),
	"$events 4 50", 'every event stored once, versions 1..50 per writer');
ok( $node->poll_query_until('postgres', qq{SELECT count(*) = $events FROM seen WHERE event_id LIKE 'pgb-%'}),
	'the handler saw them');
is($node->safe_psql('postgres', q{SELECT count(*) - count(DISTINCT event_id) FROM seen}), '0', 'once each');

$bouncer->kill_kill;
$node->stop;
done_testing();
