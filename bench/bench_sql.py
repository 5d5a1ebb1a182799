"""callq-sql beside the raw driver (psycopg 3 / PyMySQL) running the same statements, same run.

    .venv/bin/python bench/bench_sql.py [--n 3000] [--rows 1000000] [--rounds 3] [--servers postgresql,mariadb] [--json]

For each server, rates in messages/s (ratio = callq / raw, higher is better) at two depths:
with the queue empty, and with ``--rows`` (1,000,000) messages already waiting in the same
queue (bulk-loaded server side: ``generate_series`` / MariaDB's ``seq_1_to_N`` table):

* publish: ``Connection.publish(queue, 500 bodies)`` vs the driver's ``executemany`` of the same
  INSERT in one transaction.
* claim: ``fetch(queue, 100)`` vs the same claim statement(s) (``FOR UPDATE SKIP LOCKED``) through
  the driver, one transaction per batch of 100.
* ack: ``ack(100 deliveries)`` vs the same DELETE through the driver.

callq and raw rounds alternate on the same table and queue; best of ``--rounds``. The tables
live under a fresh prefix and are dropped at the end. The servers are this machine's (started
if down, as the tests do).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from callq.broker import Connection
from callq_sql.broker import SqlBroker
from callq_sql.testing import MARIADB, POSTGRES, drop_tables, ensure_running

QUEUE = "bench"
BODY = b'{"i":1,"name":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx","_callq":{"id":"0123456789abcdef"}}'
SERVERS = {"postgresql": POSTGRES, "mariadb": MARIADB}


def raw_connection(server: str) -> Any:
    if server == "postgresql":
        import psycopg

        return psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test")
    import pymysql

    db = pymysql.connect(host="127.0.0.1", port=3306, user="root", database="test")
    db.cursor().execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")  # as callq-sql
    return db


class Raw:
    """The same statements as callq-sql, straight through the DB-API driver."""

    def __init__(self, server: str, broker: SqlBroker) -> None:
        self.db = raw_connection(server)
        self.sql = broker.sql
        self.pg = server == "postgresql"
        self.me = "raw-bench"
        self.lease = broker.lease

    def publish(self, n: int, batch: int) -> int:
        cur = self.db.cursor()
        for start in range(0, n, batch):
            cur.executemany(self.sql.publish, [{"q": QUEUE, "p": 0, "nb": 0.0, "b": BODY}
                                               for _ in range(min(batch, n - start))])
            self.db.commit()
        return n

    def claim(self, n: int, batch: int) -> list[int]:
        cur = self.db.cursor()
        ids: list[int] = []
        args = {"q": QUEUE, "n": batch, "me": self.me, "lease": self.lease}
        while len(ids) < n:
            if self.pg:
                cur.execute(self.sql.claim, args)
                rows = cur.fetchall()
            else:
                cur.execute(self.sql.claim_select, args)
                rows = cur.fetchall()
                if rows:
                    cur.execute(self.sql.claim_update, {**args, "ids": tuple(r[0] for r in rows)})
            self.db.commit()
            ids.extend(r[0] for r in rows)
        return ids

    def ack(self, ids: list[int], batch: int) -> int:
        cur = self.db.cursor()
        for start in range(0, len(ids), batch):
            chunk = ids[start:start + batch]
            cur.execute(self.sql.ack_delete, {"ids": chunk if self.pg else tuple(chunk), "me": self.me})
            self.db.commit()
        return len(ids)


def bulk_load(server: str, broker: SqlBroker, rows: int) -> float:
    started = time.perf_counter()
    t = broker.tables.messages.name
    body = BODY.decode()
    with broker.engine.begin() as conn:
        if server == "postgresql":
            conn.exec_driver_sql(f"INSERT INTO {t} (queue, body) SELECT %(q)s, convert_to(%(b)s, 'UTF8') "
                                 f"FROM generate_series(1, {rows})", {"q": QUEUE, "b": body})
        else:
            conn.exec_driver_sql(f"INSERT INTO {t} (queue, body) SELECT %(q)s, %(b)s FROM seq_1_to_{rows}",
                                 {"q": QUEUE, "b": body})
    with broker.engine.connect() as conn:
        if server == "postgresql":
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(f"VACUUM ANALYZE {t}")
        else:
            conn.exec_driver_sql(f"ANALYZE TABLE {t}")
    return time.perf_counter() - started


def rate(fn: Callable[[], int]) -> float:
    started = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - started)


def run_server(server: str, args: argparse.Namespace, out: list[dict[str, Any]]) -> None:
    url = SERVERS[server]
    ensure_running(url)
    prefix = f"cqbench_{uuid.uuid4().hex[:8]}_"
    conn = Connection(f"{url}?table_prefix={prefix}")
    broker: SqlBroker = conn.broker  # type: ignore[assignment]
    raw = Raw(server, broker)
    try:
        for depth in (0, args.rows):
            if depth:
                took = bulk_load(server, broker, depth)
                print(f"  loaded {depth:,} rows in {took:.1f}s", flush=True)
            label = f"{depth:,} queued"
            best: dict[str, list[float]] = {"publish": [0.0, 0.0], "claim": [0.0, 0.0], "ack": [0.0, 0.0]}
            for r in range(args.rounds):
                # alternate who goes first: the second claims over rows the first just deleted
                for side in ((1, 0) if r % 2 == 0 else (0, 1)):
                    held: list[Any] = []
                    if side:
                        p = rate(lambda: raw.publish(args.n, 500))
                        c = rate(lambda h=held: len(h.extend(raw.claim(args.n, 100)) or h))
                        a = rate(lambda h=held: raw.ack(h, 100))
                    else:
                        p = rate(lambda: _publish(conn, args.n, 500))
                        c = rate(lambda h=held: _claim(conn, args.n, 100, h))
                        a = rate(lambda h=held: _ack(conn, h, 100))
                    for name, value in (("publish", p), ("claim", c), ("ack", a)):
                        best[name][side] = max(best[name][side], value)
            for name, what in (("publish", "publish (500/call)"), ("claim", "claim (fetch 100)"),
                               ("ack", "ack (100/call)")):
                ours, theirs = best[name]
                case = f"{server} {what}, {label}"
                print(f"{case:<52} {ours:>9,.0f}/s   raw {theirs:>9,.0f}/s   ratio {ours / theirs:5.2f}", flush=True)
                out.append({"bench": "sql", "case": case, "callq": ours, "raw": theirs, "unit": "calls/s"})
    finally:
        raw.db.close()
        conn.close()
        drop_tables(url, prefix)


def _publish(conn: Connection, n: int, batch: int) -> int:
    for start in range(0, n, batch):
        conn.publish(QUEUE, [BODY] * min(batch, n - start))
    return n


def _claim(conn: Connection, n: int, batch: int, into: list[Any]) -> int:
    while len(into) < n:
        into.extend(conn.fetch(QUEUE, batch, 1.0))
    return len(into)


def _ack(conn: Connection, deliveries: list[Any], batch: int) -> int:
    for start in range(0, len(deliveries), batch):
        conn.ack(deliveries[start:start + batch])
    return len(deliveries)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000, help="messages per round and operation")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--servers", default="postgresql,mariadb")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}; best of {args.rounds} alternating rounds; {args.n} messages per round",
          flush=True)
    out: list[dict[str, Any]] = []
    for server in args.servers.split(","):
        print(f"--- {server}", flush=True)
        run_server(server, args, out)
    if args.json:
        print("CALLQ_BENCH_JSON " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
