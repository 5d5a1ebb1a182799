"""Worker memory: RSS with a large backlog, and a long run on memory:// (no growth after warm-up).

    .venv/bin/python bench/bench_soak.py [--calls 1000000] [--backlog 1000000] [--json]

Rows (MB rows have no raw counterpart):

* soak: one worker runs ``--calls`` no-op calls on ``memory://`` with ``results=False`` (kept
  results are data held for ``result_ttl``, not the worker's own memory; fed by a thread with
  ``push_many``, at most 20,000 waiting at once), sampling its RSS (``/proc/self/statm``);
  rows: calls/s, RSS after warm-up (10% of the calls), RSS at the end, the growth in
  between, and the growth over the second half (a leak keeps growing; the pool starting a few
  more threads after the 10% mark, bounded by ``concurrency``, does not). The issue's 24-hour equivalent is ``--calls 10000000`` (too long for ``make bench``
  on a shared machine: run it by hand).
* backlog: ``--backlog`` messages waiting on Redis (a fresh prefix), a worker process consumes
  for 3 seconds; its peak RSS (bounded prefetch: the backlog stays on the server), next to the
  peak RSS of the same worker with 20,000 waiting.

Everything runs in child processes so each RSS is the worker's own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
import uuid

REDIS = "redis://127.0.0.1:6379/0"
PAGE = os.sysconf("SC_PAGE_SIZE")


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries the parent's over exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def soak_child(calls: int) -> None:
    import callq

    # results off: kept results (result_ttl, 1 h) are data, not the worker's own memory
    @callq.task(f"soak-{uuid.uuid4().hex[:6]}", broker="memory://soak", concurrency=16, results=False)
    def noop(i: int) -> None:
        return None

    def feed() -> None:
        sent = 0
        while sent < calls:
            if noop.size() > 10_000:
                time.sleep(0.002)
                continue
            n = min(10_000, calls - sent)
            noop.push_many((i,) for i in range(sent, sent + n))
            sent += n

    feeder = threading.Thread(target=feed, daemon=True)
    consumer = noop.consume()
    started = time.perf_counter()
    feeder.start()
    warm_at, warm, peak_after = calls // 10, 0.0, 0.0
    mid_at, mid, peak_after_mid = calls // 2, 0.0, 0.0
    while True:
        done = consumer.stats().done
        if done >= warm_at and not warm:
            warm = rss_mb()
        if done >= mid_at and not mid:
            mid = rss_mb()
        if warm:
            peak_after = max(peak_after, rss_mb())
        if mid:
            peak_after_mid = max(peak_after_mid, rss_mb())
        if done >= calls:
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    end = rss_mb()
    noop.stop()
    consumer.join(10)
    print(json.dumps({"rate": calls / elapsed, "warm": warm, "end": end, "peak_after": peak_after,
                      "mid": mid, "peak_after_mid": peak_after_mid}), flush=True)


def backlog_child(url: str, queue: str, seconds: float) -> None:
    import callq

    @callq.task(queue, broker=url, concurrency=16, results=False)
    def add(a: int, b: int) -> None:
        return None

    consumer = add.consume()
    time.sleep(seconds)
    done = consumer.stats().done
    add.stop()
    consumer.join(10)
    print(json.dumps({"done": done, "rss": peak_rss_mb()}), flush=True)


def child(*args: str, timeout: float) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def backlog_rss(n: int) -> dict:
    import callq
    from callq.broker import Connection

    prefix = f"cqsoak-{uuid.uuid4().hex[:8]}"
    url = f"{REDIS}?prefix={prefix}"
    conn = Connection(url)
    add = callq.task("soak", broker=url)(lambda a, b: None)
    try:
        for start in range(0, n, 50_000):
            add.push_many((i, i) for i in range(start, min(n, start + 50_000)))
        return child("--backlog-child", url, "soak", "3", timeout=60)
    finally:
        conn.purge("soak")
        import redis

        r = redis.Redis.from_url(REDIS)
        keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            r.delete(*keys)
        conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--backlog", type=int, default=1_000_000)
    ap.add_argument("--json", action="store_true", help="also print the rows for bench/run_all.py")
    ap.add_argument("--soak-child", type=int)
    ap.add_argument("--backlog-child", nargs=3)
    args = ap.parse_args()
    if args.soak_child:
        soak_child(args.soak_child)
        return
    if args.backlog_child:
        url, queue, seconds = args.backlog_child
        backlog_child(url, queue, float(seconds))
        return
    rows = []

    def report(case: str, value: float, unit: str) -> None:
        print(f"{case:<48} {value:>12,.1f} {unit}", flush=True)
        rows.append({"bench": "soak", "case": case, "callq": value, "raw": None, "unit": unit})

    res = child("--soak-child", str(args.calls), timeout=3600)
    report(f"memory:// {args.calls:,} no-op calls", res["rate"], "calls/s")
    report("RSS after warm-up (10% of the calls)", res["warm"], "MB")
    report("RSS at the end", res["end"], "MB")
    report("RSS growth after warm-up (peak - warm)", res["peak_after"] - res["warm"], "MB")
    report("RSS growth over the second half (peak - at 50%)", res["peak_after_mid"] - res["mid"], "MB")
    if args.backlog:
        small = backlog_rss(20_000)
        big = backlog_rss(args.backlog)
        report("worker peak RSS, 20,000 waiting on redis", small["rss"], "MB")
        report(f"worker peak RSS, {args.backlog:,} waiting on redis", big["rss"], "MB")
    if args.json:
        print("CALLQ_BENCH_JSON " + json.dumps(rows), flush=True)


if __name__ == "__main__":
    main()
