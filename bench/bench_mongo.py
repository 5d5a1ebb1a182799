"""callq-mongo beside raw pymongo doing the same work, same run, on a SecantusDB it starts.

    .venv/bin/python bench/bench_mongo.py [--batched 20000] [--claims 500] [--queued 10000] [--worker 500] [--json]

Rows (ratio = callq / raw, higher is better):

* publish batched: ``publish(queue, 1000 bodies)`` vs raw ``insert_many`` of the same documents.
* claim + ack, small queue: ``fetch(100)`` + ``ack(batch)`` of the ``--claims`` messages queued vs
  the classic raw loop: ``find_one_and_update`` (claim the best one under a lease, same index and
  sort) then ``delete_one`` per message, over a queue of the same length.
* worker: a real ``@callq.task(...).consume()`` process running ``--worker`` calls of an empty
  function (queued first), vs the raw ``find_one_and_update`` loop on the small queue.
* claim + ack with ``--queued`` documents waiting in the same queue (bulk-inserted first): the
  same two loops over a part of them, to see whether claims slow down as the queue grows.

SecantusDB is a reimplementation of the MongoDB protocol in Python, not MongoDB; it evaluates a
query on every index entry within the bounds before applying the limit, so its claims slow down
with the queue length where mongod's do not. Run ``CALLQ_MONGO_URL=mongodb://host/ bench/bench_mongo.py
--queued 1000000`` against a real mongod for the 1,000,000-document figure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid

import pymongo
from bson import Binary

from callq.broker import Connection
from callq.message import encode, new_meta
from callq_mongo.testing import mongo_url

BODY = b'{"i":1,"name":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx","_callq":{"id":"0123456789abcdef"}}'
LEASE = 15.0


def raw_docs(queue: str, n: int) -> list[dict]:
    now = time.time()
    return [{"q": queue, "b": Binary(BODY), "p": 0, "v": now, "o": None, "t": None, "n": 0} for _ in range(n)]


def raw_claim_ack(col: pymongo.collection.Collection, queue: str, n: int) -> int:
    for i in range(n):
        now = time.time()
        doc = col.find_one_and_update(
            {"q": queue, "v": {"$lte": now}},
            {"$set": {"o": "raw", "t": i, "v": now + LEASE}, "$inc": {"n": 1}},
            sort=[("p", -1), ("v", 1)], hint="claim", projection={"b": 1})
        if doc is None:
            raise RuntimeError(f"raw claim found nothing after {i}")
        json.loads(doc["b"])
        col.delete_one({"_id": doc["_id"], "t": i})
    return n


def callq_claim_ack(conn: Connection, queue: str, n: int) -> int:
    got = 0
    while got < n:
        batch = conn.fetch(queue, min(100, n - got), 5.0)
        if not batch:
            raise RuntimeError(f"callq claim found nothing after {got}")
        for d in batch:
            json.loads(d.body)
        conn.ack(batch)
        got += len(batch)
    return got


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - started)


def worker_child(url: str, queue: str, n: int, concurrency: int) -> None:
    """Runs in its own process: a real worker consumes ``n`` calls; prints its rate."""
    import threading

    import callq

    lock = threading.Lock()
    finished = threading.Event()
    count = [0]

    @callq.task(queue, broker=url, concurrency=concurrency)
    def work(i: int, name: str) -> None:
        with lock:
            count[0] += 1
            if count[0] >= n:
                finished.set()

    started = time.perf_counter()
    work.consume()
    if not finished.wait(120):
        raise SystemExit(f"worker ran {count[0]} of {n} calls in 120 s")
    elapsed = time.perf_counter() - started
    work.stop()
    callq.stop_all()
    print(json.dumps({"rate": n / elapsed}), flush=True)


def run_worker(url: str, conn: Connection, queue: str, n: int, concurrency: int) -> float:
    """Publish ``n`` real callq messages, then time a worker process that runs them all."""
    for start in range(0, n, 1000):
        conn.publish(queue, [encode({"i": i, "name": "x" * 40}, new_meta())
                             for i in range(start, min(n, start + 1000))])
    out = subprocess.run([sys.executable, __file__, "--worker-child", url, queue, str(n), str(concurrency)],
                         capture_output=True, text=True, timeout=180)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return float(json.loads(out.stdout.strip().splitlines()[-1])["rate"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batched", type=int, default=20000)
    ap.add_argument("--claims", type=int, default=500, help="messages queued and claimed by callq (small queue)")
    ap.add_argument("--raw-claims", type=int, default=100, help="raw claims from the small queue")
    ap.add_argument("--queued", type=int, default=10000, help="documents waiting for the last rows")
    ap.add_argument("--claims-queued", type=int, default=200, help="callq claims with --queued waiting")
    ap.add_argument("--raw-claims-queued", type=int, default=3, help="raw claims with --queued waiting")
    ap.add_argument("--worker", type=int, default=500, help="calls run by a real worker process (0: skip)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--worker-child", nargs=4, metavar=("URL", "QUEUE", "N", "CONCURRENCY"))
    ap.add_argument("--json", action="store_true", help="print a CALLQ_BENCH_JSON line for make bench")
    args = ap.parse_args()
    if args.worker_child:
        url, queue, n, concurrency = args.worker_child
        worker_child(url, queue, int(n), int(concurrency))
        return
    rows: list[dict[str, object]] = []

    def row(case: str, ours: float, raw: float) -> None:
        rows.append({"bench": "mongo", "case": case, "callq": round(ours, 1), "raw": round(raw, 1),
                     "unit": "calls/s"})
        print(f"{case:<44} {ours:>9,.0f}/s   raw {raw:>9,.0f}/s   ratio {ours / raw:5.2f}", flush=True)

    with mongo_url() as server:
        db_name = f"cqbench_{uuid.uuid4().hex[:8]}"
        base = server.split("?")[0].rstrip("/")
        client: pymongo.MongoClient = pymongo.MongoClient(base + "/")
        info = client.server_info()
        print(f"pymongo {pymongo.version}, server {info.get('version')} at {server} "
              f"({'SecantusDB' if 'secantus' in str(client.admin.command('hello')).lower() else 'mongod?'}), "
              f"python {sys.version.split()[0]}")
        conn = Connection(f"{base}/{db_name}?lease={LEASE}")
        col = client[db_name]["raw"]
        col.create_index([("q", 1), ("p", -1), ("v", 1)], name="claim")
        try:
            q = "bench"

            def ours_publish() -> int:
                for _ in range(0, args.batched, 1000):
                    conn.publish(q, [BODY] * 1000)
                return args.batched // 1000 * 1000

            def raw_publish() -> int:
                for _ in range(0, args.batched, 1000):
                    col.insert_many(raw_docs(q, 1000), ordered=False)
                return args.batched // 1000 * 1000

            row("publish batched (1000/call)", timed(ours_publish), timed(raw_publish))
            conn.purge(q)
            col.delete_many({})

            conn.publish(q, [BODY] * args.claims)
            col.insert_many(raw_docs(q, args.claims), ordered=False)
            ours_small = timed(lambda: callq_claim_ack(conn, q, args.claims))
            raw_small = timed(lambda: raw_claim_ack(col, q, args.raw_claims))
            row(f"claim + ack, queue of {args.claims:,}", ours_small, raw_small)
            conn.purge(q)
            col.delete_many({})
            if args.worker:
                rate = run_worker(f"{base}/{db_name}?lease={LEASE}", conn, "worker", args.worker,
                                  args.concurrency)
                row(f"worker (concurrency {args.concurrency}), queue of {args.worker:,}", rate, raw_small)

            if args.queued:
                started = time.perf_counter()
                for _ in range(0, args.queued, 5000):
                    conn.publish(q, [BODY] * 5000)
                    col.insert_many(raw_docs(q, 5000), ordered=False)
                print(f"(bulk insert of 2 x {args.queued:,} documents: {time.perf_counter() - started:.1f}s)")
                row(f"claim + ack, {args.queued:,} queued",
                    timed(lambda: callq_claim_ack(conn, q, args.claims_queued)),
                    timed(lambda: raw_claim_ack(col, q, args.raw_claims_queued)))
        finally:
            conn.close()
            client.drop_database(db_name)
            client.close()
    if args.json:
        print("CALLQ_BENCH_JSON " + json.dumps(rows))


if __name__ == "__main__":
    main()
