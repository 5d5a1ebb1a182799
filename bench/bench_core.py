"""Task-level throughput on memory:// and sqlite://, each beside a raw baseline.

    .venv/bin/python bench/bench_core.py [--calls 100000] [--single 20000] [--rounds 3] [--json]

Rows per broker: publish one by one (``f.push``), batched publish (``f.push_many``) and
consume of a no-op function by one worker (``f.consume``; with the task's default results,
which are kept where the broker has a shared store, and with ``results=False``), against:
- memory: ``queue.Queue`` fed with JSON bodies and drained by a thread pool of the same
  size calling the function;
- sqlite: raw sqlite3 (WAL, synchronous=NORMAL): INSERT + commit per message; executemany
  in one transaction; SELECT 100 + call each + DELETE them + commit.
sqlite has two more rows, the issue's "raw loop doing the same claim-and-delete work": the
worker (results off) against the broker's own SQL run raw with the same batch (claim with a
lease and commit, call each, delete), and the worker with results kept against the same loop
that also stores a result row per call (callq's result table and record) in the ack's
transaction: what the Python layers cost on top of the SQL that at-least-once needs.

Each figure is the best of ``--rounds`` rounds, callq and raw interleaved (the machine is shared).
``--json`` also prints the rows for bench/run_all.py (bench ``memory`` and ``sqlite``).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sqlite3
import tempfile
import threading
import time
import uuid

import callq

CONCURRENCY = 32


def noop(i: int) -> None:
    return None


def rate(n: int, fn) -> float:
    started = time.perf_counter()
    fn()
    return n / (time.perf_counter() - started)


def consume_rate(task: callq.Task, n: int) -> float:
    # the clock starts before consume(): its threads may run every call before it returns
    # (the GIL can keep this thread waiting in Thread.start() while the dispatcher runs)
    started = time.perf_counter()
    consumer = task.consume()
    while True:
        s = consumer.stats()
        if s.done >= n:
            break
        time.sleep(0.002)
    elapsed = time.perf_counter() - started
    task.stop()
    return n / elapsed


def callq_rows(url: str, single: int, calls: int) -> dict[str, float]:
    t = callq.task(f"bench-{uuid.uuid4().hex[:6]}", broker=url, concurrency=CONCURRENCY)(noop)
    t.clear()
    out = {"publish one by one": rate(single, lambda: [t.push(i) for i in range(single)])}
    t.clear()
    out["publish batched"] = rate(calls, lambda: t.push_many((i,) for i in range(calls)))
    out["consume (no-op)"] = consume_rate(t, calls)
    t.clear()
    off = callq.task(f"bench-{uuid.uuid4().hex[:6]}", broker=url, concurrency=CONCURRENCY, results=False)(noop)
    off.clear()
    off.push_many((i,) for i in range(calls))
    out["consume (no-op, results off)"] = consume_rate(off, calls)
    off.clear()
    return out


def raw_memory(single: int, calls: int) -> dict[str, float]:
    q: queue.Queue[bytes] = queue.Queue()
    out = {"publish one by one": rate(single, lambda: [q.put(json.dumps({"i": i}).encode()) for i in range(single)])}
    q = queue.Queue()
    out["publish batched"] = rate(calls, lambda: [q.put(json.dumps({"i": i}).encode()) for i in range(calls)])

    def worker() -> None:
        while True:
            body = q.get()
            if body is None:
                return
            noop(**json.loads(body))

    def drain() -> None:
        threads = [threading.Thread(target=worker) for _ in range(CONCURRENCY)]
        for th in threads:
            th.start()
        for _ in threads:
            q.put(None)
        for th in threads:
            th.join()

    out["consume (no-op)"] = rate(calls, drain)
    q = queue.Queue()
    for i in range(calls):
        q.put(json.dumps({"i": i}).encode())
    out["consume (no-op, results off)"] = rate(calls, drain)
    return out


def raw_sqlite(path: str, single: int, calls: int) -> dict[str, float]:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, body BLOB)")

    def one_by_one() -> None:
        for i in range(single):
            db.execute("BEGIN")
            db.execute("INSERT INTO q (body) VALUES (?)", (json.dumps({"i": i}).encode(),))
            db.execute("COMMIT")

    out = {"publish one by one": rate(single, one_by_one)}
    db.execute("DELETE FROM q")

    def batched() -> None:
        for start in range(0, calls, 1000):
            db.execute("BEGIN")
            db.executemany("INSERT INTO q (body) VALUES (?)",
                           [(json.dumps({"i": i}).encode(),) for i in range(start, min(calls, start + 1000))])
            db.execute("COMMIT")

    out["publish batched"] = rate(calls, batched)

    def consume() -> None:
        while True:
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute("SELECT id, body FROM q ORDER BY id LIMIT 100").fetchall()
            if not rows:
                db.execute("COMMIT")
                return
            for _, body in rows:
                noop(**json.loads(body))
            db.execute(f"DELETE FROM q WHERE id IN ({','.join('?' * len(rows))})", [r[0] for r in rows])
            db.execute("COMMIT")

    out["consume (no-op)"] = rate(calls, consume)
    db.execute("BEGIN")
    db.executemany("INSERT INTO q (body) VALUES (?)", [(json.dumps({"i": i}).encode(),) for i in range(calls)])
    db.execute("COMMIT")
    out["consume (no-op, results off)"] = rate(calls, consume)
    db.close()
    return out


def raw_sqlite_lease(path: str, calls: int, batch: int, results: bool = False) -> float:
    """The sqlite broker's own SQL, straight on sqlite3: claim ``batch`` with a lease and
    commit, call each, then delete them (the ack), as one worker fetches and acks them.
    ``results``: the ack's transaction also stores a result record per call, in the table
    and record format of callq's sqlite result store."""
    from callq.brokers.sqlite import schema as sq
    from callq.message import new_id
    from callq.results.sqlite import _SCHEMA as RESULTS_SCHEMA

    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    for statement in sq.SCHEMA:
        db.execute(statement)
    db.executescript(RESULTS_SCHEMA)
    db.execute("BEGIN")
    at = time.time()
    db.executemany(sq.INSERT, [("q", 0, at, json.dumps({"i": i}).encode()) for i in range(calls)])
    db.execute("COMMIT")

    def consume() -> None:
        while True:
            db.execute("BEGIN IMMEDIATE")
            now = time.time()
            prio = db.execute(sq.TOP_PRIORITY, ("q",)).fetchone()[0]
            rows = [] if prio is None else db.execute(sq.SELECT_READY, ("q", prio, now, batch)).fetchall()
            if not rows:
                db.execute("COMMIT")
                return
            ids = [r[0] for r in rows]
            claim = sq.new_claim()
            db.execute(sq.CLAIM.format(sq.marks(len(ids))), (claim, now + 30, *ids))
            db.execute("COMMIT")
            records = []
            for row in rows:
                started = time.time()
                result = noop(**json.loads(row[1]))
                if results:
                    call_id = new_id()
                    record = {"id": call_id, "status": "done", "result": result, "error": None, "attempt": 1,
                              "queue": "q", "task": "noop", "reason": None, "started_at": started,
                              "finished_at": time.time()}
                    records.append((call_id, "done", json.dumps(record), started + 3600))
            if results:
                db.execute("BEGIN IMMEDIATE")
                db.executemany("INSERT OR REPLACE INTO callq_results (id, status, record, expires_at) "
                               "VALUES (?, ?, ?, ?)", records)
            db.execute(sq.ACK.format(sq.marks(len(ids))), (claim, *ids))
            if results:
                db.execute("COMMIT")

    result = rate(calls, consume)
    db.close()
    return result


def show(title: str, ours: dict[str, float], raw: dict[str, float], raw_name: str) -> None:
    print(f"\n{title}")
    print(f"  {'':30s} {'callq/s':>12s} {raw_name + '/s':>16s} {'ratio':>7s}")
    for key, value in ours.items():
        print(f"  {key:30s} {value:12,.0f} {raw[key]:16,.0f} {value / raw[key]:7.2f}")


def keep_best(best: dict[str, float], rates: dict[str, float]) -> None:
    for key, value in rates.items():
        best[key] = max(best.get(key, 0.0), value)


def json_rows(bench: str, ours: dict[str, float], raw: dict[str, float]) -> list[dict]:
    return [{"bench": bench, "case": f"task {key}", "callq": value, "raw": raw[key], "unit": "calls/s"}
            for key, value in ours.items()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--single", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3, help="best of this many rounds, callq and raw interleaved")
    parser.add_argument("--json", action="store_true", help="also print the rows for bench/run_all.py")
    args = parser.parse_args()
    print(f"callq {callq.__version__}, {os.cpu_count()} cores, no-op function, concurrency {CONCURRENCY}, "
          f"best of {args.rounds} rounds")
    ours, raw = {}, {}
    for _ in range(args.rounds):
        keep_best(ours, callq_rows("memory://bench", args.single, args.calls))
        keep_best(raw, raw_memory(args.single, args.calls))
    show("memory://", ours, raw, "queue.Queue")
    rows = json_rows("memory", ours, raw)
    batch = CONCURRENCY + max(2, CONCURRENCY // 4)  # what the worker fetches at once (its prefetch limit)
    ours, raw = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            keep_best(ours, callq_rows(f"sqlite:///{tmp}/callq-{r}.db", args.single // 4, args.calls // 2))
            keep_best(raw, raw_sqlite(os.path.join(tmp, f"raw-{r}.db"), args.single // 4, args.calls // 2))
            keep_best(raw, {"lease SQL": raw_sqlite_lease(os.path.join(tmp, f"lease-{r}.db"), args.calls // 2, batch)})
            keep_best(raw, {"lease SQL + results": raw_sqlite_lease(os.path.join(tmp, f"lease-res-{r}.db"),
                                                                    args.calls // 2, batch, results=True)})
    show("sqlite://", ours, raw, "raw sqlite3")
    rows += json_rows("sqlite", ours, raw)
    ours_off, lease = ours["consume (no-op, results off)"], raw["lease SQL"]
    print(f"  {'results off vs its own SQL':30s} {ours_off:12,.0f} {lease:16,.0f} {ours_off / lease:7.2f}"
          f"   (raw: claim {batch} with a lease + commit, call each, delete)")
    rows.append({"bench": "sqlite", "case": "task consume (no-op, results off) vs lease SQL", "callq": ours_off,
                 "raw": lease, "unit": "calls/s"})
    ours_on, lease_res = ours["consume (no-op)"], raw["lease SQL + results"]
    print(f"  {'results kept vs its own SQL':30s} {ours_on:12,.0f} {lease_res:16,.0f} {ours_on / lease_res:7.2f}"
          f"   (raw: the same, and a result row per call stored in the ack's transaction)")
    rows.append({"bench": "sqlite", "case": "task consume (no-op) vs lease SQL + result rows", "callq": ours_on,
                 "raw": lease_res, "unit": "calls/s"})
    print("\ngoals: memory consume >= 50,000 calls/s; sqlite >= 0.50 of raw sqlite3")
    if args.json:
        print("CALLQ_BENCH_JSON " + json.dumps(rows), flush=True)


if __name__ == "__main__":
    main()
