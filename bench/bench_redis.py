"""callq-redis (and callq-redis-stream) against raw redis-py doing the same work, same machine, same run.

    .venv/bin/python bench/bench_redis.py [--single 4500] [--batched 60000] [--consume 9000]
                                          [--worker 20000] [--concurrency 16] [--worker-rounds 5]
                                          [--processes 2] [--rounds 5]
                                          [--modes reliable,lmove,fast,stream] [--json]

Rows (ratio = callq / raw, higher is better):

* publish 1-by-1: ``Connection(url).publish(queue, [body])`` vs a raw ``LPUSH`` loop; both encode
  the same JSON message (keyword arguments + metadata) per call.
* publish batched: ``publish(queue, 1000 bodies)`` vs raw pipelined ``LPUSH`` (1,000 per pipeline).
* push 1-by-1: ``add.push(a, b)`` (binding, metadata, JSON, publish) vs a raw loop building the same
  message and ``LPUSH``-ing it; push_many: ``add.push_many`` vs the same in raw pipelines.
* consume loop: ``fetch(100)`` -> decode + INCR per message -> ``ack(batch)`` through Connection, vs a
  raw loop that pops 100 per round trip (``RPOP key 100``), decodes and calls the function inline,
  with no acks at all.
* worker (the issue's workload): 20,000 calls of ``add(a, b)`` doing one Redis ``INCR``, consumed
  by a real ``@callq.task(...).consume()`` process (fetch, pool, acks, heartbeats) vs the raw loop
  (``RPOP`` 100, decode, call inline); medians of interleaved runs; also its peak RSS.
* worker, results=False (reliable mode and Streams): the same without keeping return values
  (results are on by default where the broker has a shared store: one more write per chunk of calls).
* worker --processes 2 vs 1 (reliable mode): the same workload, ``consume(processes=2)`` against
  one process.

A worker's rate runs from its first call to its last (both within ~2 ms): starting the worker
processes (an interpreter and imports each, ~0.3 s per child here) is not part of it, for one
process or several, as the raw loop's rate does not count its own start.

Every key lives under a fresh prefix and is deleted at the end. ``--json`` also prints the
rows for bench/run_all.py (bench ``redis`` per mode, and ``redis+stream``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import redis

import callq
from callq.broker import Connection
from callq.message import decode, encode, new_meta

REDIS = "redis://127.0.0.1:6379/0"
QUEUE = "bench"


def message(i: int) -> bytes:
    return encode({"i": i, "name": "x" * 40}, new_meta())


def raw_message(i: int) -> bytes:
    return json.dumps({"i": i, "name": "x" * 40, "_callq": new_meta()}, separators=(",", ":")).encode()


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries the parent's over exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rate(fn: Callable[[], int]) -> float:
    started = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - started)


def url_for(mode: str, prefix: str) -> str:
    if mode == "stream":
        return f"redis+stream://127.0.0.1:6379/0?prefix={prefix}"
    return f"{REDIS}?mode={mode}&prefix={prefix}"


# --- raw redis-py -----------------------------------------------------------------------------


def raw_single(r: redis.Redis, key: str, n: int) -> int:
    for i in range(n):
        r.lpush(key, raw_message(i))
    return n


def raw_batched(r: redis.Redis, key: str, n: int, batch: int) -> int:
    for start in range(0, n, batch):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(n, start + batch)):
            pipe.lpush(key, raw_message(i))
        pipe.execute()
    return n


def raw_consume(r: redis.Redis, key: str, counter: str, n: int, batch: int) -> int:
    got = 0
    while got < n:
        items = r.rpop(key, batch) or []
        for body in items:
            json.loads(body)
            r.incr(counter)
        got += len(items)
    return got


# --- callq ------------------------------------------------------------------------------------


def callq_single(conn: Connection, n: int) -> int:
    for i in range(n):
        conn.publish(QUEUE, [message(i)])
    return n


def callq_batched(conn: Connection, n: int, batch: int) -> int:
    for start in range(0, n, batch):
        conn.publish(QUEUE, [message(i) for i in range(start, min(n, start + batch))])
    return n


def raw_push(r: redis.Redis, key: str, n: int) -> int:
    """What ``push`` does, by hand: build the message (arguments + metadata), JSON, LPUSH."""
    for i in range(n):
        r.lpush(key, json.dumps({"a": i, "b": i, "_callq": new_meta()}, separators=(",", ":")).encode())
    return n


def raw_push_pipeline(r: redis.Redis, key: str, n: int, batch: int) -> int:
    for start in range(0, n, batch):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(n, start + batch)):
            pipe.lpush(key, json.dumps({"a": i, "b": i, "_callq": new_meta()}, separators=(",", ":")).encode())
        pipe.execute()
    return n


def _add(a: int, b: int) -> None:
    return None


def callq_push(task: callq.Task, n: int) -> int:
    for i in range(n):
        task.push(i, i)
    return n


def callq_consume(conn: Connection, r: redis.Redis, counter: str, n: int, batch: int) -> int:
    got = 0
    while got < n:
        deliveries = conn.fetch(QUEUE, batch, 1.0)
        for d in deliveries:
            decode(d.body)
            r.incr(counter)
        conn.ack(deliveries)
        got += len(deliveries)
    return got


def worker_child(url: str, queue: str, counter: str, n: int, concurrency: int, processes: int) -> None:
    """Runs in its own process: consume ``n`` calls of add(a, b) (one INCR each); print rate and peak RSS.

    ``processes`` < 0: one process with ``results=False``."""
    r = redis.Redis.from_url(REDIS)
    options = {"results": False} if processes < 0 else {}

    @callq.task(queue, broker=url, concurrency=concurrency, **options)
    def add(a: int, b: int) -> None:
        r.incr(counter)

    running = add.consume(processes) if processes > 1 else add.consume()
    first = wait_for_count(r, counter, n)
    elapsed = time.perf_counter() - first
    running.stop()
    running.join(30)
    callq.stop_all()
    print(json.dumps({"rate": n / elapsed, "rss_mb": peak_rss_mb()}), flush=True)


def wait_for_count(r: redis.Redis, counter: str, n: int) -> float:
    """Return once ``counter`` reaches ``n``, within ~2 ms, with the time the first call ran
    (``perf_counter``, within ~2 ms). The poll runs in the worker's own process (the raw loop
    pays for no watcher): until the first call it looks every 2 ms (nothing runs yet), then it
    sleeps half the time the rate so far says is left: a dozen polls per run, not hundreds."""
    while not int(r.get(counter) or 0):
        time.sleep(0.002)
    first = time.perf_counter()
    while (done := int(r.get(counter) or 0)) < n:
        left = (n - done) * (time.perf_counter() - first) / done
        time.sleep(min(max(left / 2, 0.002), 0.25))
    return first


def add_message(i: int) -> bytes:
    return encode({"a": i, "b": i}, new_meta())


def raw_worker_loop(r: redis.Redis, key: str, counter: str, n: int) -> float:
    """The issue's baseline: RPOP 100 at a time, decode, call add(a, b) (one INCR) inline."""
    raw_batched_bodies(r, key, [add_message(i) for i in range(n)])

    def add(a: int, b: int) -> None:
        r.incr(counter)

    started = time.perf_counter()
    got = 0
    while got < n:
        for body in r.rpop(key, 100) or []:
            kwargs = json.loads(body)
            del kwargs["_callq"]
            add(**kwargs)
            got += 1
    return n / (time.perf_counter() - started)


def raw_batched_bodies(r: redis.Redis, key: str, bodies: list[bytes]) -> None:
    for start in range(0, len(bodies), 1000):
        pipe = r.pipeline(transaction=False)
        for body in bodies[start:start + 1000]:
            pipe.lpush(key, body)
        pipe.execute()


def run_worker(url: str, conn: Connection, r: redis.Redis, counter: str, n: int, concurrency: int,
               processes: int = 1) -> dict:
    conn.publish(QUEUE, [add_message(i) for i in range(n)])
    r.delete(counter)
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--worker-child", url, QUEUE, counter, str(n), str(concurrency),
             str(processes)],
            capture_output=True, text=True, timeout=120,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError("the worker did not run every call within 120s; was Redis restarted "
                           "meanwhile (it keeps nothing on disk here)?") from None
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def row(name: str, ours: float, raw: float) -> None:
    print(f"{name:<34} {ours:>11,.0f}/s   raw {raw:>11,.0f}/s   ratio {ours / raw:6.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--single", type=int, default=4_500)
    ap.add_argument("--batched", type=int, default=60_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--consume", type=int, default=9_000)
    ap.add_argument("--fetch", type=int, default=100)
    ap.add_argument("--worker", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--worker-rounds", type=int, default=5, help="interleaved worker/raw runs (median)")
    ap.add_argument("--processes", type=int, default=2, help="also run the reliable worker in N processes")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--modes", default="reliable,lmove,fast,stream")
    ap.add_argument("--json", action="store_true", help="also print the rows for bench/run_all.py")
    ap.add_argument("--worker-child", nargs=6, metavar=("URL", "QUEUE", "COUNTER", "N", "CONCURRENCY", "PROCS"))
    args = ap.parse_args()
    if args.worker_child:
        url, queue, counter, n, concurrency, procs = args.worker_child
        worker_child(url, queue, counter, int(n), int(concurrency), int(procs))
        return

    prefix = f"cqbench-{uuid.uuid4().hex[:8]}"
    r = redis.Redis.from_url(REDIS)
    raw_key, counter = f"{prefix}:raw", f"{prefix}:counter"
    try:
        import hiredis  # noqa: F401
        parser = "hiredis"
    except ImportError:
        parser = "pure-Python parser"
    print(f"redis-py {redis.__version__} ({parser}), Redis {r.info('server')['redis_version']}, "
          f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; best of {args.rounds} "
          "alternating rounds per row")
    rounds = args.rounds
    rows: list[dict] = []

    def best_of(ours: Callable[[int], int], raw: Callable[[int], int], n: int,
                setup: Callable[[int], None] | None = None) -> tuple[float, float]:
        """Alternate callq and raw rounds (noise hits both alike); the best rate of each."""
        per = max(1, n // rounds)
        best_ours = best_raw = 0.0
        for _ in range(rounds):
            if setup:
                setup(per)
            best_raw = max(best_raw, rate(lambda: raw(per)))
            best_ours = max(best_ours, rate(lambda: ours(per)))
        return best_ours, best_raw

    try:
        for mode in args.modes.split(","):
            print(f"--- {mode}: {url_for(mode, prefix)}")
            url = url_for(mode, f"{prefix}-{mode}")
            conn = Connection(url)
            bench = "redis+stream" if mode == "stream" else "redis"
            label = "" if mode == "stream" else f"{mode} "

            def report(case: str, ours: float, raw: float | None, unit: str = "calls/s",
                       bench: str = bench, label: str = label) -> None:
                if raw is not None:
                    row(case, ours, raw)
                rows.append({"bench": bench, "case": label + case, "callq": ours, "raw": raw, "unit": unit})

            def clear(_: int, c: Connection = conn) -> None:
                c.purge(QUEUE)
                r.delete(raw_key)

            def fill(n: int, c: Connection = conn) -> None:
                clear(n)
                callq_batched(c, n, 1000)
                raw_batched(r, raw_key, n, 1000)

            try:
                report("publish 1-by-1", *best_of(lambda n, c=conn: callq_single(c, n),
                                               lambda n: raw_single(r, raw_key, n), args.single, clear))
                report(f"publish batched ({args.batch}/call)",
                    *best_of(lambda n, c=conn: callq_batched(c, n, args.batch),
                             lambda n: raw_batched(r, raw_key, n, args.batch), args.batched, clear))
                add = callq.task(QUEUE, broker=url)(_add)
                report("push 1-by-1", *best_of(lambda n, t=add: callq_push(t, n),
                                               lambda n: raw_push(r, raw_key, n), args.single, clear))
                report(f"push_many vs raw pipeline ({args.batch}/pipeline)",
                       *best_of(lambda n, t=add: len(t.push_many((i, i) for i in range(n))),
                                lambda n: raw_push_pipeline(r, raw_key, n, args.batch), args.batched, clear))
                cons, raw_cons = best_of(lambda n, c=conn: callq_consume(c, r, counter, n, args.fetch),
                                         lambda n: raw_consume(r, raw_key, counter, n, args.fetch),
                                         args.consume, fill)
                report(f"consume loop (fetch {args.fetch} + ack)", cons, raw_cons)
                if args.worker:
                    # the workload: add(a, b) doing one INCR; medians of interleaved runs
                    ours, raws, rss = [], [], 0.0
                    for _ in range(args.worker_rounds):
                        clear(0)
                        raws.append(raw_worker_loop(r, raw_key, counter, args.worker))
                        res = run_worker(url, conn, r, counter, args.worker, args.concurrency)
                        ours.append(res["rate"])
                        rss = max(rss, res["rss_mb"])
                    raw_loop = median(raws)
                    report(f"worker add(a,b)+INCR (concurrency {args.concurrency})", median(ours), raw_loop)
                    print(f"{'worker peak RSS':<34} {rss:>9.1f} MB", flush=True)
                    report("worker peak RSS", rss, None, "MB")
                    if mode in ("reliable", "stream"):
                        ours, raws = [], []
                        for _ in range(args.worker_rounds):
                            clear(0)
                            raws.append(raw_worker_loop(r, raw_key, counter, args.worker))
                            ours.append(run_worker(url, conn, r, counter, args.worker, args.concurrency, -1)["rate"])
                        report("worker add(a,b)+INCR, results=False", median(ours), median(raws))
                    if mode == "reliable" and args.processes > 1:
                        one, many = [], []
                        for _ in range(args.worker_rounds):
                            clear(0)
                            one.append(run_worker(url, conn, r, counter, args.worker, args.concurrency)["rate"])
                            many.append(run_worker(url, conn, r, counter, args.worker, args.concurrency,
                                                   args.processes)["rate"])
                        report(f"worker --processes {args.processes} vs 1", median(many), median(one))
                clear(0)
            finally:
                conn.close()
    finally:
        keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            r.delete(*keys)
        r.close()
    if args.json:
        print("CALLQ_BENCH_JSON " + json.dumps(rows), flush=True)


if __name__ == "__main__":
    main()
