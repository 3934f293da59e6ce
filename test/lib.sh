# Shell helpers shared by test/run-demo, test/run-tests and test/bench/run.
#
# They work as root (CI) or as a user with sudo.  PostgreSQL refuses to run
# as root, so servers, builds and pg_regress run as the postgres user, in a
# private work directory that user owns ($ES_WORKDIR).

ES_PACKAGES="build-essential pkg-config postgresql-15 postgresql-server-dev-15 postgresql-15-plproxy libipc-run-perl librdkafka-dev libssl-dev kcat bc pgbouncer python3-psycopg nodejs prometheus-postgres-exporter default-jdk-headless libpostgresql-jdbc-java"
ES_PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
export PATH="$ES_PGBIN:$PATH"

es_sudo() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
es_as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }
es_log() { printf '== %s\n' "$*"; }
# The benchmarks' figures: the median of the numbers on standard input (one a
# line), and their least and greatest as "lo-hi" (printf format of each, %.3f).
es_median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
es_minmax() { sort -g | awk -v f="${1:-%.3f}" 'NR == 1 {lo = $1} {hi = $1} END {printf f "-" f, lo, hi}'; }
# The SQL of the table a user would write by hand for es_events' rows (the
# benchmarks' baseline): its columns, the indexes of one of its partitions,
# and a primary key on event_id (es_events keeps it in the key table
# es_event_ids).  LIKE es_events INCLUDING INDEXES would copy none: the
# indexes of a partitioned es_events are its partitions'.
es_raw_table_sql() { # table name
	cat <<SQL
CREATE TABLE $1 (LIKE es_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS, PRIMARY KEY (event_id),
                 UNIQUE (aggregate_id, version));
CREATE INDEX ON $1 (tx_id, position);
CREATE UNIQUE INDEX ON $1 (position);
CREATE INDEX ON $1 (correlation_id, position) WHERE correlation_id IS NOT NULL;
SQL
}

# Install the Debian packages the build, the tests and the demo need (only
# when one is missing: apt-get update takes a while).
es_install_prerequisites() {
	local missing=() p
	for p in $ES_PACKAGES; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	# npm for test/t/013_cloudevents.pl: Debian's package, unless the
	# nodejs installed brings its own (as NodeSource's does).
	command -v npm >/dev/null 2>&1 || missing+=(npm)
	if [ ${#missing[@]} -gt 0 ]; then
		es_log "installing ${missing[*]}"
		es_sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
		es_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
	fi
	# Debian's postgresql-common may have created and started a default
	# cluster; the scripts here never use it.
	id postgres >/dev/null 2>&1 || { echo "the postgres user is missing" >&2; return 1; }
}

# A work directory owned by postgres; removed on exit unless ES_KEEP is set.
es_workdir() {
	if [ -z "${ES_WORKDIR:-}" ]; then
		ES_WORKDIR=$(mktemp -d /tmp/ultracore_es.XXXXXX)
		chmod 755 "$ES_WORKDIR"
		es_sudo chown postgres "$ES_WORKDIR"
		export ES_WORKDIR
	fi
}

# Copy the source tree (without build products) to $ES_WORKDIR/src, build it
# there as postgres with the given PG_CFLAGS, and install it.
es_build_and_install() { # srcdir [pg_cflags]
	local src=$1 cflags=${2:-}
	es_workdir
	es_log "building in $ES_WORKDIR/src${cflags:+ with PG_CFLAGS=$cflags}"
	es_sudo rm -rf "$ES_WORKDIR/src"
	mkdir -p "$ES_WORKDIR/src" 2>/dev/null || es_sudo mkdir -p "$ES_WORKDIR/src"
	(cd "$src" && tar --exclude=.git --exclude='*.o' --exclude='*.so' --exclude=tmp_check \
		--exclude=tmp_check_iso --exclude=results --exclude=output_iso --exclude=log --exclude=node_modules -cf - .) |
		es_sudo tar -C "$ES_WORKDIR/src" -xf -
	es_sudo chown -R postgres "$ES_WORKDIR/src"
	es_as_postgres make -C "$ES_WORKDIR/src" -s clean >/dev/null
	es_as_postgres make -C "$ES_WORKDIR/src" -s -j"$(nproc)" PG_CFLAGS="$cflags"
	es_sudo make -C "$ES_WORKDIR/src" -s install
}

es_pg_version() { "$ES_PGBIN/postgres" --version | awk '{print $3}'; }

# Start a throwaway server with the extension preloaded.  It listens only on
# a Unix socket in its own directory, so it never collides with another.
es_start_server() { # name [extra postgresql.conf lines]
	es_workdir
	ES_PGDATA=$ES_WORKDIR/$1
	ES_SOCKDIR=$ES_WORKDIR
	ES_PORT=5432
	export ES_PGDATA ES_SOCKDIR ES_PORT
	es_as_postgres initdb -D "$ES_PGDATA" -A trust -U postgres --no-sync >/dev/null
	es_as_postgres tee -a "$ES_PGDATA/postgresql.conf" >/dev/null <<-CONF
		listen_addresses = ''
		unix_socket_directories = '$ES_SOCKDIR'
		port = $ES_PORT
		shared_preload_libraries = 'ultracore_es'
		${2:-}
	CONF
	es_as_postgres pg_ctl -D "$ES_PGDATA" -l "$ES_PGDATA/server.log" -w start >/dev/null
}

es_stop_server() {
	if [ -n "${ES_PGDATA:-}" ] && [ -f "$ES_PGDATA/postmaster.pid" ]; then
		es_as_postgres pg_ctl -D "$ES_PGDATA" -m fast -w stop >/dev/null || true
	fi
	if [ -n "${ES_WORKDIR:-}" ] && [ -z "${ES_KEEP:-}" ]; then
		es_sudo rm -rf "$ES_WORKDIR"
	fi
}

es_psql() { es_as_postgres psql -X -h "$ES_SOCKDIR" -p "$ES_PORT" -U postgres -d postgres "$@"; }

# Wait (at most 60 s, or the given seconds) until a query returns true.
# The loop runs in one session on the server, every 50 ms: a new psql
# (and backend) per try would cost the benchmarks that wait on it a
# sixth of the machine.  An error counts as not yet; so does a server that
# cannot be reached yet (psql's exit status 2), tried again every second.
es_wait_sql() { # query [seconds]
	local deadline=$((SECONDS + ${2:-60})) rc
	while :; do
		rc=0
		es_psql -Atq -v ON_ERROR_STOP=1 -v query="$1" -v seconds="$((deadline - SECONDS))" >/dev/null 2>&1 <<'SQL' || rc=$?
SELECT set_config('es_wait.query', :'query', false), set_config('es_wait.seconds', :'seconds', false);
DO $wait$
DECLARE
	deadline timestamptz := clock_timestamp() + make_interval(secs => current_setting('es_wait.seconds')::float8);
	ok boolean;
BEGIN
	LOOP
		BEGIN
			EXECUTE current_setting('es_wait.query') INTO ok;
		EXCEPTION WHEN OTHERS THEN
			ok := false;
		END;
		EXIT WHEN ok;
		COMMIT;	-- a new snapshot for each try: none held for long
		IF clock_timestamp() > deadline THEN
			RAISE EXCEPTION 'timed out';
		END IF;
		PERFORM pg_sleep(0.05);
	END LOOP;
END
$wait$;
SQL
		[ "$rc" = 0 ] && return 0
		[ "$rc" = 2 ] && [ "$SECONDS" -lt "$deadline" ] || break
		sleep 1
	done
	echo "timed out waiting for: $1" >&2
	return 1
}

# Start the local test broker (test/kafka_mock_broker, built with the
# extension: librdkafka's mock cluster, three brokers on loopback) with
# the given options (-t topic:partitions); its address goes to $ES_BROKERS.
es_start_test_broker() {
	local i
	es_workdir
	"$ES_WORKDIR/src/test/kafka_mock_broker" -b 3 "$@" </dev/null >"$ES_WORKDIR/broker.out" 2>&1 &
	ES_BROKER_PID=$!
	for i in $(seq 100); do
		grep -q '^ready$' "$ES_WORKDIR/broker.out" && break
		sleep 0.1
	done
	ES_BROKERS=$(sed -n 's/^bootstrap\.servers=//p' "$ES_WORKDIR/broker.out")
	[ -n "$ES_BROKERS" ] || { cat "$ES_WORKDIR/broker.out" >&2; return 1; }
	export ES_BROKERS ES_BROKER_PID
}

es_stop_test_broker() {
	if [ -n "${ES_BROKER_PID:-}" ]; then
		kill "$ES_BROKER_PID" 2>/dev/null || true
		wait "$ES_BROKER_PID" 2>/dev/null || true
		ES_BROKER_PID=
	fi
}

# Release 1.0, built from this clone's history and installed into a copy of
# the PostgreSQL installation in $ES_WORKDIR, for the upgrade test
# (test/t/007_upgrade.pl): a store made by the released library is then
# updated by this one.  Exports ES_RELEASE_1_0 (the copy's install path);
# without the history (a shallow clone), leaves it unset and the test
# updates a 1.0 catalog with this library alone.
ES_RELEASE_1_0_COMMIT=c30372aee297d9adbb276ef20b6ca08f9c2c4037
es_build_release_1_0() { # srcdir
	local src=$1 bindir sharedir includedir root
	es_workdir
	if ! git -C "$src" cat-file -e "$ES_RELEASE_1_0_COMMIT^{commit}" 2>/dev/null; then
		es_log "release 1.0 is not in this clone's history: the upgrade test uses this library alone"
		return 0
	fi
	bindir=$(pg_config --bindir)
	sharedir=$(pg_config --sharedir)
	includedir=$(dirname "$(dirname "$(pg_config --includedir-server)")")
	root=$ES_WORKDIR/release-1.0
	es_log "building release 1.0 into a copy of the PostgreSQL installation in $root"
	es_sudo rm -rf "$root"
	mkdir -p "$root$(dirname "$(dirname "$bindir")")" "$root$(dirname "$sharedir")" "$root/src" \
		"$root$(dirname "$includedir")"
	cp -a "$(dirname "$bindir")" "$root$(dirname "$(dirname "$bindir")")/"
	cp -a "$sharedir" "$root$(dirname "$sharedir")/"
	# The headers are only read: the copy links to them.
	ln -sfn "$includedir" "$root$includedir"
	rm -f "$root$(pg_config --pkglibdir)"/ultracore_es.* "$root$sharedir"/extension/ultracore_es*
	git -C "$src" archive "$ES_RELEASE_1_0_COMMIT" | tar -C "$root/src" -xf -
	es_sudo chown -R postgres "$root"
	es_as_postgres make -C "$root/src" -s -j"$(nproc)" PG_CONFIG="$root$bindir/pg_config" >/dev/null
	es_as_postgres make -C "$root/src" -s install PG_CONFIG="$root$bindir/pg_config" >/dev/null
	ES_RELEASE_1_0=$root$(dirname "$bindir")
	export ES_RELEASE_1_0
}
