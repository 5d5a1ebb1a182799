"""callq-pulsar beside raw pulsar-client doing the same work, same run, on a pulsar-lite it starts.

    .venv/bin/python bench/bench_pulsar.py [--single 1500] [--batched 20000] [--consume 10000] [--worker 5000] [--json]

Rows (ratio = callq / raw, higher is better):

* publish 1-by-1: ``Connection.publish(queue, [body])`` vs raw ``producer.send(body)`` (both wait
  for the server's receipt of each message).
* publish batched: ``publish(queue, 1000 bodies)`` (``send_async`` each, then every receipt) vs raw
  ``send_async`` + ``flush`` per 1000; producer batching off on both (callq's default).
* consume: ``fetch(100)`` + ``ack(batch)`` vs a raw loop of ``receive`` + ``acknowledge`` per
  message (shared subscription, receiver queue 100 on both).
* worker: a real ``@callq.task(...).consume()`` process (decode, pool, acks) running ``--worker``
  calls of an empty function, vs the same raw consume loop.

pulsar-lite is a reimplementation of the Pulsar protocol, not Apache Pulsar: these numbers say
nothing about a real Pulsar cluster. ``CALLQ_PULSAR_URL`` uses another server instead.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid

import pulsar

from callq.broker import Connection
from callq.message import encode, new_meta
from callq_pulsar.testing import pulsar_url

BODY = b'{"i":1,"name":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx","_callq":{"id":"0123456789abcdef"}}'


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
    ap.add_argument("--single", type=int, default=1500)
    ap.add_argument("--batched", type=int, default=20000)
    ap.add_argument("--consume", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--worker", type=int, default=5000, help="calls run by a real worker process (0: skip)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--worker-child", nargs=4, metavar=("URL", "QUEUE", "N", "CONCURRENCY"))
    ap.add_argument("--json", action="store_true", help="print a CALLQ_BENCH_JSON line for make bench")
    args = ap.parse_args()
    if args.worker_child:
        url, queue, n, concurrency = args.worker_child
        worker_child(url, queue, int(n), int(concurrency))
        return
    rows: list[dict[str, object]] = []

    def best_of(ours, raw, setup=None) -> tuple[float, float]:  # type: ignore[no-untyped-def]
        """Alternate callq and raw rounds (noise hits both alike); the best rate of each."""
        best_ours = best_raw = 0.0
        for _ in range(args.rounds):
            if setup:
                setup()
            best_raw = max(best_raw, timed(raw))
            best_ours = max(best_ours, timed(ours))
        return best_ours, best_raw

    def row(case: str, ours: float, raw: float) -> None:
        rows.append({"bench": "pulsar", "case": case, "callq": round(ours, 1), "raw": round(raw, 1),
                     "unit": "calls/s"})
        print(f"{case:<36} {ours:>10,.0f}/s   raw {raw:>10,.0f}/s   ratio {ours / raw:5.2f}", flush=True)

    with pulsar_url() as server:
        print(f"pulsar-client {pulsar.__version__} on pulsar-lite at {server}, python {sys.version.split()[0]}")
        run = uuid.uuid4().hex[:8]
        conn = Connection(f"{server}/public/default?prefetch=100")
        client = pulsar.Client(server, logger=None)
        try:
            ours_q, raw_q = f"bench-{run}-callq", f"bench-{run}-raw"
            raw_topic = f"persistent://public/default/{raw_q}"
            raw_cons = client.subscribe(raw_topic, "callq", consumer_type=pulsar.ConsumerType.Shared,
                                        receiver_queue_size=100)
            producer = client.create_producer(raw_topic, batching_enabled=False, block_if_queue_full=True)

            def raw_single() -> int:
                for _ in range(args.single):
                    producer.send(BODY)
                return args.single

            def raw_batched() -> int:
                for _ in range(0, args.batched, 1000):
                    for _ in range(1000):
                        producer.send_async(BODY, None)
                    producer.flush()
                return args.batched // 1000 * 1000

            def ours_single() -> int:
                for _ in range(args.single):
                    conn.publish(ours_q, [BODY])
                return args.single

            def ours_batched() -> int:
                for _ in range(0, args.batched, 1000):
                    conn.publish(ours_q, [BODY] * 1000)
                return args.batched // 1000 * 1000

            def raw_consume() -> int:
                for _ in range(args.consume):
                    raw_cons.acknowledge(raw_cons.receive(5000))
                return args.consume

            def ours_consume() -> int:
                got = 0
                while got < args.consume:
                    batch = conn.fetch(ours_q, min(100, args.consume - got), 5.0)
                    if not batch:
                        raise RuntimeError(f"callq consume stalled after {got}")
                    conn.ack(batch)
                    got += len(batch)
                return got

            conn.publish(ours_q, [BODY])  # producer and subscription exist before timing
            conn.purge(ours_q)

            def fill() -> None:
                conn.purge(ours_q)
                conn.publish(ours_q, [BODY] * args.consume)
                for _ in range(0, args.consume, 1000):
                    for _ in range(1000):
                        producer.send_async(BODY, None)
                    producer.flush()

            row("publish 1-by-1", *best_of(ours_single, raw_single))
            row("publish batched (1000/call)", *best_of(ours_batched, raw_batched))
            conn.purge(ours_q)
            while True:  # what the raw publish rows left
                try:
                    raw_cons.acknowledge(raw_cons.receive(300))
                except pulsar.Timeout:
                    break
            cons, raw_cons = best_of(ours_consume, raw_consume, fill)
            row("consume (fetch 100 + ack)", cons, raw_cons)
            if args.worker:
                conn.purge(ours_q)
                rate = run_worker(f"{server}/public/default", conn, f"bench-{run}-worker",
                                  args.worker, args.concurrency)
                row(f"worker (concurrency {args.concurrency}) vs raw consume", rate, raw_cons)
        finally:
            conn.close()
            client.close()
    if args.json:
        print("CALLQ_BENCH_JSON " + json.dumps(rows))


if __name__ == "__main__":
    main()
