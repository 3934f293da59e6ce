# The upgrade test (007_upgrade.pl) with the 1.0 catalog served by this
# library alone, from CREATE EXTENSION ... VERSION '1.0' to the update:
# what a shallow clone runs instead of the released library.  The suite
# (from a full clone, with ES_RELEASE_1_0) runs both, so that the promise
# that this library serves a 1.0 store until its update is tested every time.
use strict;
use warnings;
# Loaded here, at compile time: their INIT blocks would not run under do.
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use FindBin;

delete $ENV{ES_RELEASE_1_0};
my $test = "$FindBin::RealBin/007_upgrade.pl";
my $ok = do $test;
die "could not run $test: $@" if $@;
die "could not read $test: $!" unless defined $ok;
