"""An ultracore_es client in Python with psycopg 3 (Debian: python3-psycopg).

Opens an account, deposits with optimistic concurrency (a conflict, caught
by its SQLSTATE UE001, is answered by reading the version again), and
follows the log in commit order from a checkpoint it keeps as ints.
test/t/015_clients.pl runs it.

usage: python3 psycopg_client.py CONNINFO ACCOUNT_ID
"""
import sys

import psycopg
from psycopg.types.json import Jsonb

conninfo, account = sys.argv[1], sys.argv[2]


def deposit(conn, amount, expected_version):
    """Append a deposit at the version the caller read; None on a conflict."""
    try:
        return conn.execute(
            "SELECT version FROM es_append(aggregate_type => 'Account', aggregate_id => %(id)s,"
            " event_type => 'ACCOUNT_BALANCE_UPDATED', data => %(data)s, expected_version => %(version)s)",
            {"id": account, "data": Jsonb({"amount": amount}), "version": expected_version}).fetchone()[0]
    except psycopg.Error as e:
        if e.sqlstate != "UE001":  # psycopg has no class for UE001: test the SQLSTATE
            raise
        print("conflict:", e.diag.message_detail)
        return None


def version_of(conn):
    return conn.execute("SELECT es_aggregate_version(%(id)s)", {"id": account}).fetchone()[0]


with psycopg.connect(conninfo, autocommit=True) as conn, psycopg.connect(conninfo, autocommit=True) as other:
    conn.execute("SELECT es_append('Account', %(id)s, 'ACCOUNT_OPENED', %(data)s, expected_version => 0)",
                 {"id": account, "data": Jsonb({"owner": "Ann"})})
    seen = version_of(conn)
    # Another teller deposits meanwhile.
    other.execute("SELECT es_append('Account', %(id)s, 'ACCOUNT_BALANCE_UPDATED', %(data)s, %(v)s)",
                  {"id": account, "data": Jsonb({"amount": 5}), "v": seen})
    version = deposit(conn, 10, seen)
    if version is None:
        version = deposit(conn, 10, version_of(conn))  # read again, decide again
    print("deposited at version", version)

    # A reader in commit order: its checkpoint (tx_id, position) kept as ints.
    tx, pos, total = 0, 0, 0
    while True:
        rows = conn.execute(
            "SELECT tx_id::text, position, aggregate_id, data FROM es_read_all("
            " after_tx_id => %(tx)s, after_position => %(pos)s, aggregate_type => 'Account', max_count => 2)",
            {"tx": tx, "pos": pos}).fetchall()
        if not rows:
            break
        total += sum(data.get("amount", 0) for _, _, aggregate_id, data in rows if aggregate_id == account)
        tx, pos = int(rows[-1][0]), rows[-1][1]
    print("total deposited", total)
