# The concurrent writers of the TAP tests of commit order: pgbench clients
# whose transactions each append one event (data {"r": 1..5}), stay open a
# random 0 to max_ms milliseconds, and roll back when r is 1 (a fifth of
# them), so that commits come out of key order and some never come.
package EsWriters;

use strict;
use warnings;
use IPC::Run;

# EsWriters->new($node, $max_ms): the script, written into the node's directory.
sub new
{
	my ($class, $node, $max_ms) = @_;
	my $script = $node->basedir . '/writers.sql';
	open my $fh, '>', $script or die $!;
	print $fh qq{\\set r random(1, 5)
\\set d random(0, $max_ms)
\\set id random(1, 1000000000)
BEGIN;
SELECT es_append('Customer', 'W' || :client_id || '-' || :id, 'CUSTOMER_CREATED', jsonb_build_object('r', :r), 0);
\\sleep :d ms
\\if :r = 1
ROLLBACK;
\\else
COMMIT;
\\endif
};
	close $fh;
	return bless { script => $script, node => $node }, $class;
}

# $writers->start($seconds[, $node[, $clients]]): the clients, started on
# $node (the one given to new by default), 6 of them by default; finish it.
sub start
{
	my ($self, $seconds, $node, $clients) = @_;
	my ($out, $err) = ('', '');

	$node //= $self->{node};
	return IPC::Run::start(
		[ 'pgbench', '-n', '-c', $clients // 6, '-j', '2', '-T', $seconds, '-f', $self->{script},
		  '-h', $node->host, '-p', $node->port, 'postgres' ],
		'>', \$out, '2>', \$err);
}

1;
