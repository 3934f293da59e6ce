# The README's client examples, run against a server over TCP: Python with
# psycopg 3 (examples/psycopg_client.py) and Java with JDBC
# (examples/JdbcClient.java), each with Debian's driver.  Each opens an
# account, meets a conflict (UE001, caught by SQLSTATE), reads again and
# deposits, and follows the log from a checkpoint kept as integers.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use FindBin;
use lib "$FindBin::RealBin/..";
use EsNode;

my $examples = "$FindBin::RealBin/../../examples";
my $node = EsNode->new('clients', q{
listen_addresses = '127.0.0.1'
});
$node->append_conf('pg_hba.conf', "host all all 127.0.0.1/32 trust\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION ultracore_es');
my $user = $node->safe_psql('postgres', 'SELECT current_user');
my $port = $node->port;

sub run_client
{
	my ($what, @command) = @_;
	my ($out, $err) = ('', '');
	ok(IPC::Run::run(\@command, '>', \$out, '2>', \$err, IPC::Run::timeout(180)), "$what runs")
	  or diag($err);
	like($out, qr/^conflict: .*?expected version 1.*?actual version 2/ms, "$what: a conflict caught by SQLSTATE UE001");
	like($out, qr/^deposited at version 3$/m, "$what: read again, deposited");
	like($out, qr/^total deposited 15$/m, "$what: the log followed from integer checkpoints");
	return;
}

run_client('Python (psycopg 3)', 'python3', "$examples/psycopg_client.py",
	"host=127.0.0.1 port=$port dbname=postgres user=$user", 'PY-1');
run_client('Java (JDBC)', 'java', '-cp', '/usr/share/java/postgresql.jar', "$examples/JdbcClient.java",
	"jdbc:postgresql://127.0.0.1:$port/postgres?user=$user", 'JAVA-1');
is( $node->safe_psql(
		'postgres', q{SELECT string_agg(aggregate_id || ':' || version, ' ' ORDER BY aggregate_id) FROM es_aggregate_versions}),
	'JAVA-1:3 PY-1:3', 'each account has its three events');

$node->stop;
done_testing();
