"""A client as a bank's services write them: psycopg 3 through PgBouncer in
transaction mode (test/t/012_pgbouncer.pl starts both).  Prints one line per
check, "ok <what>" or "not ok <what>: <why>", and the figures the TAP test
compares with the database.

usage: psycopg_pgbouncer.py CONNINFO
"""
import sys
import threading

import psycopg

CONNINFO = sys.argv[1]
WRITERS = 4
EVENTS_EACH = 50
results = []


def check(what, ok, why=""):
    results.append(("ok " if ok else "not ok ") + what + ("" if ok else ": " + why))


def connect():
    # PgBouncer 1.18 in transaction mode cannot carry a driver's prepared
    # statements from one server connection to the next: switch them off.
    return psycopg.connect(CONNINFO, autocommit=True, prepare_threshold=None)


def writer(n, errors):
    """Append EVENTS_EACH events to an aggregate of its own, each in a
    transaction of its own, with the expected version it read."""
    try:
        with connect() as conn:
            for v in range(EVENTS_EACH):
                with conn.transaction():
                    conn.execute(
                        "SELECT es_append('Customer', %s, %s, %s::jsonb, %s, event_id => %s)",
                        (f"PGB-{n}", "CUSTOMER_CREATED" if v == 0 else "CUSTOMER_UPDATED",
                         '{"n": %d}' % v, v, f"pgb-{n}-{v + 1}"))
    except Exception as e:  # reported by the main thread
        errors.append(repr(e))


errors = []
threads = [threading.Thread(target=writer, args=(n, errors)) for n in range(1, WRITERS + 1)]
for t in threads:
    t.start()
for t in threads:
    t.join()
check("concurrent writers through the pooler", not errors, "; ".join(errors))

with connect() as conn:
    # A conflict, caught by its SQLSTATE: drivers do not know UE001 by name.
    try:
        conn.execute("SELECT es_append('Customer', 'PGB-1', 'CUSTOMER_UPDATED', '{}', 1)")
        check("a stale expected version is refused", False, "no error")
    except psycopg.Error as e:
        check("a stale expected version is refused with UE001", e.sqlstate == "UE001", str(e.sqlstate))
    try:
        psycopg.errors.lookup("UE001")
        check("psycopg.errors.lookup does not know UE001", False, "it does now: simplify the README")
    except KeyError:
        check("psycopg.errors.lookup does not know UE001", True)

    # A retry of an append that was stored: the same event id, the same
    # content, returns the stored result, whatever the expected version.
    row = conn.execute(
        "SELECT version FROM es_append('Customer', 'PGB-1', 'CUSTOMER_UPDATED', %s::jsonb, %s, event_id => %s)",
        ('{"n": %d}' % (EVENTS_EACH - 1), EVENTS_EACH - 1, f"pgb-1-{EVENTS_EACH}")).fetchone()
    check("a resend is absorbed", row[0] == EVENTS_EACH, str(row))

    # Reading the log in pages from a checkpoint kept as Python ints: the
    # tx_id goes back as a bigint parameter.
    tx, pos, seen = 0, 0, []
    while True:
        rows = conn.execute(
            "SELECT tx_id::text, position, event_id FROM es_read_all(after_tx_id => %s, after_position => %s,"
            " aggregate_type => 'Customer', max_count => 37)", (tx, pos)).fetchall()
        if not rows:
            break
        seen.extend(r[2] for r in rows)
        tx, pos = int(rows[-1][0]), rows[-1][1]
    mine = [e for e in seen if e.startswith("pgb-")]
    check("es_read_all pages with an int checkpoint", len(mine) == WRITERS * EVENTS_EACH and len(set(mine)) == len(mine),
          f"{len(mine)} events, {len(set(mine))} distinct")
    # And as text, as some drivers keep it.
    n = conn.execute("SELECT count(*) FROM es_read_all(after_tx_id => %s::text, max_count => 100000)"
                     " WHERE event_id LIKE 'pgb-%%'", ("0",)).fetchone()[0]
    check("es_read_all takes the checkpoint as text", n == WRITERS * EVENTS_EACH, str(n))

for line in results:
    print(line)
print("events", WRITERS * EVENTS_EACH)
