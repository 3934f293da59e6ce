# The Kafka cluster of the TAP tests: librdkafka's mock cluster in a process
# of its own (test/kafka_mock_broker), faults injected on command, messages
# produced by the same program (-P, per-message headers) and read back with
# kcat, an independent client.
package EsKafka;

use strict;
use warnings;
use IPC::Run;
use EsNode;
use Test::More;

my $program = 'test/kafka_mock_broker';

# Every cluster started, stopped in END if the test did not: by the time
# DESTROY runs in global destruction the harness may be gone, and the mock
# (which keeps serving after its input ends, as the benchmarks run it)
# would outlive the test.
my @clusters;

# EsKafka->new('topic:partitions', ...): three brokers, these topics.
sub new
{
	my ($class, @topics) = @_;
	my $self = bless { in => '', out => '', err => '' }, $class;
	$self->{timer} = IPC::Run::timeout(60);
	$self->{harness} = IPC::Run::start([ $program, '-b', '3', map { ('-t', $_) } @topics ],
		'<', \$self->{in}, '>', \$self->{out}, '2>', \$self->{err}, $self->{timer});
	$self->{harness}->pump until $self->{out} =~ /^ready$/m;
	($self->{bootstrap}) = $self->{out} =~ /^bootstrap\.servers=(\S+)$/m
	  or die "no bootstrap servers from $program: $self->{err}";
	push @clusters, $self;
	return $self;
}

sub bootstrap { return $_[0]->{bootstrap}; }

# An EsNode whose workers use these brokers.
sub node
{
	my ($self, $name, $extra, %params) = @_;
	return EsNode->new($name, "ultracore_es.kafka_brokers = '$self->{bootstrap}'\n" . ($extra // ''), %params);
}

# A command of the mock cluster (see test/kafka_mock_broker.c); dies on an error.
sub command
{
	my ($self, $command) = @_;
	$self->{out} = '';
	$self->{in} .= "$command\n";
	$self->{timer}->start(60);
	$self->{harness}->pump until $self->{out} =~ /^(ok|error.*)$/m;
	die "kafka_mock_broker: $command: $1" if $1 ne 'ok';
	return;
}

# Produce messages: [topic, key, {header => value}, value], in order.
sub produce
{
	my ($self, @messages) = @_;
	my $input = '';
	foreach my $m (@messages)
	{
		my ($topic, $key, $headers, $value) = @$m;
		$input .= join("\t", $topic, $key // '',
			join(',', map { "$_=$headers->{$_}" } sort keys %$headers), $value) . "\n";
	}
	my ($out, $err) = ('', '');
	IPC::Run::run([ $program, '-P', $self->{bootstrap} ], '<', \$input, '>', \$out, '2>', \$err)
	  or die "kafka_mock_broker -P: $err";
	return;
}

# How many messages a topic's partitions hold: the sum of their high
# watermarks, asked of the brokers with kcat.
sub messages
{
	my ($self, $topic, $partitions) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'kcat', '-b', $self->{bootstrap}, '-Q', map { ('-t', "$topic:$_:-1") } 0 .. $partitions - 1 ],
		'>', \$out, '2>', \$err)
	  or die "kcat -Q: $err";
	my $sum = 0;
	$sum += $1 while $out =~ /offset (\d+)/g;
	return $sum;
}

# Every message of a topic, read with kcat, in partition and offset order:
# {partition, offset, key, headers => {name => value}, value}.
sub consume
{
	my ($self, $topic) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'kcat', '-b', $self->{bootstrap}, '-t', $topic, '-C', '-e', '-q',
			'-f', "%p\t%o\t%k\t%h\t%s\n" ], '>', \$out, '2>', \$err)
	  or die "kcat: $err";
	my @messages;
	foreach my $line (split /\n/, $out)
	{
		my ($partition, $offset, $key, $headers, $value) = split /\t/, $line, 5;
		# kcat separates headers with commas, which JSON values contain too.
		my %h = map { split /=/, $_, 2 } split /,(?=[A-Za-z_][A-Za-z0-9_.-]*=)/, $headers;
		push @messages,
		  { partition => $partition, offset => $offset, key => $key, headers => \%h, value => $value };
	}
	return sort { $a->{partition} <=> $b->{partition} || $a->{offset} <=> $b->{offset} } @messages;
}

# Check messages against the aggregates' versions: per key (aggregate), in
# partition order, each version the next one or a repeat of an earlier one
# with the same event id (at-least-once), never a gap.  Returns the number
# of distinct event ids, or dies describing the first breach.
sub check_order
{
	my (@messages) = @_;
	my (%max, %id_of, %ids);
	foreach my $m (@messages)
	{
		my $key = $m->{key};
		my $v = $m->{headers}{ce_aggregateversion};
		my $id = $m->{headers}{ce_id};
		my $seen = $max{$key} // 0;
		if ($v == $seen + 1)
		{
			$max{$key} = $v;
			$id_of{"$key/$v"} = $id;
		}
		elsif ($v <= $seen)
		{
			die "aggregate $key version $v repeated with another id ($id, was $id_of{\"$key/$v\"})"
			  if $id_of{"$key/$v"} ne $id;
		}
		else
		{
			die "aggregate $key: version $v after version $seen (partition $m->{partition}, offset $m->{offset})";
		}
		$ids{$id} = 1;
	}
	return scalar keys %ids;
}

sub stop
{
	my ($self) = @_;
	$self->{harness}->kill_kill if $self->{harness};
	delete $self->{harness};
	return;
}

# A test that bails out leaves no cluster behind.
sub DESTROY
{
	my ($self) = @_;
	$self->stop;
	return;
}

END
{
	local $?;    # the test's exit status, which reaping the mock would overwrite
	$_->stop for grep { defined } @clusters;
}

1;
