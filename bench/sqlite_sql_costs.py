"""What the sqlite broker's claim-and-delete SQL costs per message, against variants of it.

    .venv/bin/python bench/sqlite_sql_costs.py [--messages 50000] [--batch 40] [--rounds 3]
    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python \\
        bench/sqlite_sql_costs.py --only lease [--setup-only]   # instructions: run minus setup-only

Not part of ``make bench`` (it measures SQL layouts, not callq): each variant consumes the
same messages (the worker's body size, one ``available_at`` per publish) in batches of
``--batch`` on a fresh WAL file, straight on sqlite3, and prints CPU µs per message (thread
time, best of ``--rounds``). The numbers behind docs/architecture.md, "sqlite:// worker".
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable

from callq.brokers.sqlite import schema as sq

T = sq.TABLE
Q = "bench"
RAW_SCHEMA = ("CREATE TABLE q (id INTEGER PRIMARY KEY, body BLOB NOT NULL)",)
LEASE_TABLE_SCHEMA = (
    sq.SCHEMA[0],
    f"CREATE INDEX {T}_waiting ON {T} (queue, priority DESC, available_at) WHERE claim IS NULL",
    "CREATE TABLE leases (claim INTEGER PRIMARY KEY, queue TEXT NOT NULL, until REAL NOT NULL, ids TEXT NOT NULL)",
    "CREATE INDEX leases_until ON leases (until)",
)
NO_CLAIM_INDEX_SCHEMA = (sq.SCHEMA[0], f"CREATE INDEX {T}_fetch ON {T} (queue, priority DESC, available_at)")
RETURNING = (
    f"UPDATE {T} SET claim = ?, available_at = ?, redelivered = redelivered OR claim IS NOT NULL "
    f"WHERE id IN (SELECT id FROM {T} WHERE queue = ? AND priority = ? AND available_at <= ? "
    "ORDER BY available_at LIMIT ?) RETURNING id, body, redelivered"
)
# ``+column`` keeps the planner on the rowid range instead of the fetch index
CLAIM_RANGE = (f"UPDATE {T} SET claim = ?, available_at = ? WHERE id BETWEEN ? AND ? "
               "AND +queue = ? AND +priority = ? AND +available_at <= ?")
ACK_RANGE = f"DELETE FROM {T} WHERE id BETWEEN ? AND ? AND claim = ?"


def body(i: int) -> bytes:
    return json.dumps({"i": i, "_callq": {"id": f"{i:032x}", "published_at": time.time(), "attempt": 0}}).encode()


def select_ready(db: sqlite3.Connection, batch: int) -> tuple[float, int, list[tuple]]:
    now = time.time()
    prio = db.execute(sq.TOP_PRIORITY, (Q,)).fetchone()[0]
    return now, prio, db.execute(sq.SELECT_READY, (Q, prio, now, batch)).fetchall()


def claim(db: sqlite3.Connection, ids: list[int], now: float) -> int:
    c = sq.new_claim()
    db.execute(sq.CLAIM.format(sq.marks(len(ids))), (c, now + 30, *ids))
    return c


def ack(db: sqlite3.Connection, c: int, ids: list[int]) -> None:
    db.execute(sq.ACK.format(sq.marks(len(ids))), (c, *ids))


# --- variants: each consumes n messages in batches -------------------------------------------


def raw(db: sqlite3.Connection, n: int, batch: int) -> None:
    """bench_core's raw loop: SELECT + DELETE in one transaction, no index, no lease."""
    got = 0
    while got < n:
        db.execute("BEGIN IMMEDIATE")
        ids = [r[0] for r in db.execute("SELECT id, body FROM q ORDER BY id LIMIT ?", (batch,))]
        db.execute(f"DELETE FROM q WHERE id IN ({sq.marks(len(ids))})", ids)
        db.execute("COMMIT")
        got += len(ids)


def lease(db: sqlite3.Connection, n: int, batch: int) -> None:
    """The broker's SQL: claim (UPDATE the lease) and commit; ack (DELETE) in its own commit."""
    got = 0
    while got < n:
        db.execute("BEGIN IMMEDIATE")
        now, _, rows = select_ready(db, batch)
        ids = [r[0] for r in rows]
        c = claim(db, ids, now)
        db.execute("COMMIT")
        ack(db, c, ids)
        got += len(ids)


def no_lease(db: sqlite3.Connection, n: int, batch: int) -> None:
    """The broker's table and index, SELECT + DELETE in one transaction (no at-least-once)."""
    got = 0
    while got < n:
        db.execute("BEGIN IMMEDIATE")
        _, _, rows = select_ready(db, batch)
        ids = [r[0] for r in rows]
        db.execute(f"DELETE FROM {T} WHERE id IN ({sq.marks(len(ids))})", ids)
        db.execute("COMMIT")
        got += len(ids)


def no_index(db: sqlite3.Connection, n: int, batch: int) -> None:
    """The lease without the fetch index (rows taken in rowid order)."""
    got = 0
    while got < n:
        db.execute("BEGIN IMMEDIATE")
        now = time.time()
        rows = db.execute(f"SELECT id, body FROM {T} WHERE queue = ? AND available_at <= ? ORDER BY id LIMIT ?",
                          (Q, now, batch)).fetchall()
        ids = [r[0] for r in rows]
        c = claim(db, ids, now)
        db.execute("COMMIT")
        ack(db, c, ids)
        got += len(ids)


def one_tx(db: sqlite3.Connection, n: int, batch: int) -> None:
    """Ack of one batch and claim of the next in one transaction."""
    got, prev = 0, None
    while got < n:
        db.execute("BEGIN IMMEDIATE")
        if prev:
            ack(db, *prev)
        now, _, rows = select_ready(db, batch)
        ids = [r[0] for r in rows]
        prev = (claim(db, ids, now), ids)
        db.execute("COMMIT")
        got += len(ids)
    ack(db, *prev)


def returning(db: sqlite3.Connection, n: int, batch: int) -> None:
    """Claim with one UPDATE ... RETURNING (the ready rows in a subquery)."""
    got = 0
    while got < n:
        now, c = time.time(), sq.new_claim()
        db.execute("BEGIN IMMEDIATE")
        prio = db.execute(sq.TOP_PRIORITY, (Q,)).fetchone()[0]
        rows = db.execute(RETURNING, (c, now + 30, Q, prio, now, batch)).fetchall()
        db.execute("COMMIT")
        ack(db, c, [r[0] for r in rows])
        got += len(rows)


def rowid_range(db: sqlite3.Connection, n: int, batch: int) -> None:
    """Claim and delete by rowid range (exact only while a batch's rows are contiguous)."""
    got = 0
    while got < n:
        db.execute("BEGIN IMMEDIATE")
        now, prio, rows = select_ready(db, batch)
        ids = [r[0] for r in rows]
        c, lo, hi = sq.new_claim(), min(ids), max(ids)
        if db.execute(CLAIM_RANGE, (c, now + 30, lo, hi, Q, prio, now)).rowcount != len(ids):
            raise AssertionError("rows not contiguous: the range variant does not apply")
        db.execute("COMMIT")
        db.execute(ACK_RANGE, (lo, hi, c))
        got += len(ids)


def lease_table(db: sqlite3.Connection, n: int, batch: int) -> None:
    """Leases in their own table (one row per claim); waiting rows in a partial index."""
    got = 0
    while got < n:
        db.execute("BEGIN IMMEDIATE")
        now = time.time()
        db.execute("SELECT claim FROM leases WHERE until <= ? LIMIT 1", (now,)).fetchall()
        prio = db.execute(f"SELECT max(priority) FROM {T} WHERE queue = ? AND claim IS NULL", (Q,)).fetchone()[0]
        rows = db.execute(f"SELECT id, body, redelivered FROM {T} WHERE queue = ? AND priority = ? AND "
                          "available_at <= ? AND claim IS NULL ORDER BY available_at LIMIT ?",
                          (Q, prio, now, batch)).fetchall()
        ids = [r[0] for r in rows]
        c = sq.new_claim()
        db.execute(f"UPDATE {T} SET claim = ? WHERE id IN ({sq.marks(len(ids))})", (c, *ids))
        db.execute("INSERT INTO leases VALUES (?, ?, ?, ?)", (c, Q, now + 30, ",".join(map(str, ids))))
        db.execute("COMMIT")
        db.execute("BEGIN IMMEDIATE")
        ack(db, c, ids)
        db.execute("DELETE FROM leases WHERE claim = ?", (c,))
        db.execute("COMMIT")
        got += len(ids)


VARIANTS: dict[str, tuple[Callable[[sqlite3.Connection, int, int], None], tuple[str, ...]]] = {
    "raw": (raw, RAW_SCHEMA),
    "lease": (lease, sq.SCHEMA),
    "no_lease": (no_lease, sq.SCHEMA),
    "no_index": (no_index, sq.SCHEMA[:1]),
    "one_tx": (one_tx, sq.SCHEMA),
    "returning": (returning, sq.SCHEMA),
    "rowid_range": (rowid_range, sq.SCHEMA),
    "lease_table": (lease_table, LEASE_TABLE_SCHEMA),
    "index_without_claim": (lease, NO_CLAIM_INDEX_SCHEMA),
}


def fresh(path: str, schema: tuple[str, ...], n: int) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, cached_statements=256)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    for statement in schema:
        db.execute(statement)
    db.execute("BEGIN")
    if schema is RAW_SCHEMA:
        db.executemany("INSERT INTO q (body) VALUES (?)", [(body(i),) for i in range(n)])
    else:
        at = time.time()
        db.executemany(sq.INSERT, [(Q, 0, at, body(i)) for i in range(n)])
    db.execute("COMMIT")
    return db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=40, help="messages per claim (the worker's prefetch limit)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=sorted(VARIANTS), help="run this variant once, print nothing")
    parser.add_argument("--setup-only", action="store_true", help="with --only: fill the file, consume nothing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="callq-sqlcost-") as tmp:
        if args.only:
            fn, schema = VARIANTS[args.only]
            db = fresh(os.path.join(tmp, "x.db"), schema, args.messages)
            if not args.setup_only:
                fn(db, args.messages, args.batch)
            return
        best: dict[str, float] = {}
        for r in range(args.rounds):
            for name, (fn, schema) in VARIANTS.items():
                db = fresh(os.path.join(tmp, f"{name}-{r}.db"), schema, args.messages)
                started = time.thread_time()
                fn(db, args.messages, args.batch)
                cpu = (time.thread_time() - started) / args.messages * 1e6
                db.close()
                best[name] = min(best.get(name, cpu), cpu)
    print(f"sqlite {sqlite3.sqlite_version}, {args.messages} messages, batches of {args.batch}, "
          f"best of {args.rounds}: CPU µs per message")
    for name, cpu in best.items():
        print(f"  {name:22s} {cpu:6.2f}  ({cpu / best['lease']:.2f} of lease)")


if __name__ == "__main__":
    main()
