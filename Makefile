# ultracore_es: PGXS build.
#
#   make && make install          build and install into the PostgreSQL that pg_config names
#   make installcheck             pg_regress + isolation specs + TAP tests; each suite starts its
#                                 own temporary server with the library preloaded
#
# CI adds PG_CFLAGS=-Werror (see .ci/run); the flags below are always on.

EXTENSION = ultracore_es
MODULE_big = ultracore_es
OBJS = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c src/*/*.c)))

# Install scripts live in sql/ beside the pg_regress inputs; their names tell them apart.
DATA = $(wildcard sql/ultracore_es--*.sql)

PG_CPPFLAGS = -I$(srcdir)/src -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers \
	$(shell pkg-config --cflags rdkafka libcrypto)

# librdkafka (Debian's librdkafka-dev), found with pkg-config; only src/kafka/ includes it.
# OpenSSL's libcrypto (Debian's libssl-dev): SHA-256 of the ledger, AES-256-GCM of personal data.
SHLIB_LINK = $(shell pkg-config --libs rdkafka libcrypto)

# pg_regress: one file per feature, run in this order on one temporary instance.
REGRESS = install read_models rebuild projections event_types append append_batch idempotency \
	read_stream read_all causation append_only bad_input privileges rebase load reducers upcasting \
	snapshots snapshot_property handlers dead_letters builtin_handlers stats kafka_settings health access \
	ledger personal_data export partitions as_of fuzz
REGRESS_OPTS = --temp-config=$(srcdir)/test/regress.conf --temp-instance=$(CURDIR)/tmp_check

# Isolation specs: test/specs/*.spec with expected output in test/expected/.
ISOLATION = $(patsubst test/specs/%.spec,%,$(sort $(wildcard test/specs/*.spec)))
ISOLATION_OPTS = --inputdir=$(srcdir)/test --temp-config=$(srcdir)/test/isolation.conf \
	--temp-instance=$(CURDIR)/tmp_check_iso

# TAP tests: test/t/NNN_name.pl (PostgreSQL::Test::Cluster).
TAP_TESTS = 1
PROVE_TESTS = $(sort $(wildcard test/t/*.pl))

EXTRA_CLEAN = tmp_check tmp_check_iso output_iso results regression.diffs regression.out \
	log test/tmp_check test/kafka_mock_broker test/isolation_master.key

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS tracks no header dependencies: rebuild everything when a header changes.
$(OBJS): $(wildcard src/*/*.h)

# The master key of the isolation specs' server (test/isolation.conf): made fresh, readable by
# the user who runs the tests (and so the server) only.
installcheck: test/isolation_master.key
test/isolation_master.key:
	umask 077 && head -c 32 /dev/urandom > $@

# The Kafka cluster of the tests and the demo (librdkafka's mock), built with the module.
all: test/kafka_mock_broker
test/kafka_mock_broker: test/kafka_mock_broker.c
	$(CC) $(CFLAGS) $(PG_CFLAGS) -o $@ $< $(shell pkg-config --cflags --libs rdkafka)
