"""callq's sqlite broker against raw sqlite3 doing the same work on the same machine.

    .venv/bin/python bench/bench_sqlite.py [--single 5000] [--batched 100000] [--batch 1000] [--fetch 100]
                                           [--rounds 3] [--json]

Rows: publish one by one (a commit each), batched publish (``--batch`` bodies per call,
one transaction), consume (fetch ``--fetch`` + ack them). The raw baseline is the least
a queue on sqlite must do: INSERT + commit per message; executemany in one transaction;
SELECT a batch + DELETE it + commit. Both use WAL and synchronous=NORMAL on a fresh file.
A last row compares consume with the SQL callq's sqlite broker itself runs (claim the batch with a
lease and commit, then delete it on ack), run straight on sqlite3.
``--json`` also prints the rows for bench/run_all.py (bench ``sqlite``).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from functools import partial

from callq.broker import Connection

QUEUE = "bench"


def body(i: int) -> bytes:
    return json.dumps({"i": i, "name": "x" * 40, "_callq": {"id": f"{i:032x}", "attempt": 0}}).encode()


def timed(fn: Callable[[], int]) -> float:
    started = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - started)


# --- raw sqlite3 ----------------------------------------------------------------------------


def raw_db(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, queue TEXT NOT NULL, body BLOB NOT NULL)")
    db.execute("CREATE INDEX q_queue ON q (queue, id)")
    return db


def raw_single(db: sqlite3.Connection, bodies: list[bytes]) -> int:
    for b in bodies:
        db.execute("INSERT INTO q (queue, body) VALUES (?, ?)", (QUEUE, b))
    return len(bodies)


def raw_batched(db: sqlite3.Connection, bodies: list[bytes], batch: int) -> int:
    for start in range(0, len(bodies), batch):
        db.execute("BEGIN")
        db.executemany("INSERT INTO q (queue, body) VALUES (?, ?)", [(QUEUE, b) for b in bodies[start:start + batch]])
        db.execute("COMMIT")
    return len(bodies)


def raw_consume(db: sqlite3.Connection, n: int, batch: int) -> int:
    got = 0
    while got < n:
        db.execute("BEGIN IMMEDIATE")
        rows = db.execute("SELECT id, body FROM q WHERE queue = ? ORDER BY id LIMIT ?", (QUEUE, batch)).fetchall()
        ids = [r[0] for r in rows]
        db.execute(f"DELETE FROM q WHERE id IN ({','.join('?' * len(ids))})", ids)
        db.execute("COMMIT")
        got += len(rows)
    return got


def raw_leased_consume(path: str, bodies: list[bytes], n: int, batch: int) -> float:
    """The same SQL as the sqlite broker's fetch + ack (claim with a lease, then delete), no Python layer."""
    from callq.brokers.sqlite import schema as sq

    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    for statement in sq.SCHEMA:
        db.execute(statement)
    db.execute("BEGIN")
    db.executemany(sq.INSERT, [(QUEUE, 0, time.time(), b) for b in bodies[:n]])
    db.execute("COMMIT")

    def consume() -> int:
        got = 0
        while got < n:
            db.execute("BEGIN IMMEDIATE")
            now = time.time()
            prio = db.execute(sq.TOP_PRIORITY, (QUEUE,)).fetchone()[0]
            rows = db.execute(sq.SELECT_READY, (QUEUE, prio, now, batch)).fetchall()
            ids = [r[0] for r in rows]
            marks = ",".join("?" * len(ids))
            claim = sq.new_claim()
            db.execute(sq.CLAIM.format(marks), (claim, now + 30, *ids))
            db.execute("COMMIT")
            db.execute(sq.ACK.format(marks), (claim, *ids))
            got += len(rows)
        return got

    rate = timed(consume)
    db.close()
    return rate


# --- callq ----------------------------------------------------------------------------------


def cq_single(conn: Connection, bodies: list[bytes]) -> int:
    for b in bodies:
        conn.publish(QUEUE, [b])
    return len(bodies)


def cq_batched(conn: Connection, bodies: list[bytes], batch: int) -> int:
    for start in range(0, len(bodies), batch):
        conn.publish(QUEUE, bodies[start:start + batch])
    return len(bodies)


def cq_consume(conn: Connection, n: int, batch: int) -> int:
    got = 0
    while got < n:
        deliveries = conn.fetch(QUEUE, batch, 1.0)
        conn.ack(deliveries)
        got += len(deliveries)
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--single", type=int, default=5000, help="messages published one by one")
    parser.add_argument("--batched", type=int, default=100_000, help="messages published in batches")
    parser.add_argument("--batch", type=int, default=1000, help="bodies per batched publish")
    parser.add_argument("--fetch", type=int, default=100, help="messages per fetch (and ack)")
    parser.add_argument("--rounds", type=int, default=3, help="best of this many rounds")
    parser.add_argument("--json", action="store_true", help="also print the rows for bench/run_all.py")
    args = parser.parse_args()

    single = [body(i) for i in range(args.single)]
    many = [body(i) for i in range(args.batched)]
    total = args.single + args.batched
    best: dict[tuple[str, str], float] = {}

    def keep(kind: str, row: str, rate: float) -> None:
        best[kind, row] = max(best.get((kind, row), 0.0), rate)

    with tempfile.TemporaryDirectory(prefix="callq-bench-") as tmp:
        for r in range(args.rounds):
            db = raw_db(os.path.join(tmp, f"raw-{r}.db"))
            keep("raw", "publish one by one", timed(partial(raw_single, db, single)))
            keep("raw", "publish batched", timed(partial(raw_batched, db, many, args.batch)))
            keep("raw", "consume (fetch+ack)", timed(partial(raw_consume, db, total, args.fetch)))
            db.close()
            keep("raw", "lease SQL", raw_leased_consume(os.path.join(tmp, f"lease-{r}.db"), many, args.batched,
                                                        args.fetch))

            conn = Connection(f"sqlite:///{os.path.join(tmp, f'callq-{r}.db')}")
            keep("callq", "publish one by one", timed(partial(cq_single, conn, single)))
            keep("callq", "publish batched", timed(partial(cq_batched, conn, many, args.batch)))
            keep("callq", "consume (fetch+ack)", timed(partial(cq_consume, conn, total, args.fetch)))
            assert conn.size(QUEUE) == 0
            conn.close()

    print(f"sqlite {sqlite3.sqlite_version}, {args.single} single + {args.batched} batched "
          f"(batch {args.batch}), fetch {args.fetch}, best of {args.rounds}")
    print(f"{'':24}{'callq msg/s':>14}{'raw msg/s':>14}{'ratio':>8}")
    for row in ("publish one by one", "publish batched", "consume (fetch+ack)"):
        ours, raw = best["callq", row], best["raw", row]
        print(f"{row:24}{ours:14,.0f}{raw:14,.0f}{ours / raw:8.0%}")
    ours, raw = best["callq", "consume (fetch+ack)"], best["raw", "lease SQL"]
    print(f"{'consume vs lease SQL':24}{ours:14,.0f}{raw:14,.0f}{ours / raw:8.0%}"
          "   (raw = the broker's own claim+delete SQL: what at-least-once costs in sqlite)")
    if args.json:
        rows = [{"bench": "sqlite", "case": f"conn {row}", "callq": best["callq", row], "raw": best["raw", row],
                 "unit": "calls/s"} for row in ("publish one by one", "publish batched", "consume (fetch+ack)")]
        rows.append({"bench": "sqlite", "case": "conn consume vs lease SQL", "callq": ours, "raw": raw,
                     "unit": "calls/s"})
        print("CALLQ_BENCH_JSON " + json.dumps(rows), flush=True)


if __name__ == "__main__":
    main()
