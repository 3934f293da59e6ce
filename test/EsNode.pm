# The TAP tests' server: a PostgreSQL::Test::Cluster node, initialized and
# not started, with the library preloaded, its workers serving database
# postgres (polling every 200 ms), restarting after a crash (the tests kill
# -9), and the extra postgresql.conf lines given; init => {...} goes to
# init (allows_streaming => 1, for a primary with standbys), other
# parameters to PostgreSQL::Test::Cluster->new (install_path, for instance).
package EsNode;

use strict;
use warnings;
use PostgreSQL::Test::Cluster;

sub new
{
	my ($class, $name, $extra, %params) = @_;
	my $init = delete $params{init} // {};
	my $node = PostgreSQL::Test::Cluster->new($name, %params);
	$node->init(%$init);
	$node->append_conf(
		'postgresql.conf', q{
shared_preload_libraries = 'ultracore_es'
ultracore_es.database = 'postgres'
ultracore_es.worker_poll_interval = 200
restart_after_crash = on
} . ($extra // ''));
	return $node;
}

1;
