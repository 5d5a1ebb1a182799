"""Worker throughput on Redis with call history / results on vs off, same machine, same run.

    .venv/bin/python bench/bench_results.py [--calls 10000] [--rounds 4] [--concurrency 8] [--json]

Each round runs a real worker process (``@callq.task(...).consume()`` on ``redis://``) over
``--calls`` published calls whose function does one Redis INCR (as bench_redis.py's worker row),
once per case, cases alternating so noise hits all alike; the best rate of each case is kept.
The clock stops when every call ran AND the plugin's background writes are flushed (history rows
inserted, results stored), so deferred work is counted.

* off: ``results=False``, no history (the baseline; the "raw" column).
* history: call history to a sqlite file (``callq.history.enable``), results off.
* results: results in the broker's Redis (``results=None``, the default), history off.

Rows: history on / off (must stay >= 0.8), results on / off (>= 0.7).
``BENCH_CASES=off,noop`` measures a do-nothing after-call hook instead (the cost of leaving the
consumer's fast path, which any per-call plugin pays).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

import redis
from bench_redis import wait_for_count

from callq.broker import Connection
from callq.message import encode, new_meta

REDIS = "redis://127.0.0.1:6379/0"
QUEUE = "bench-results"
CASES = tuple(os.environ.get("BENCH_CASES", "off,history,results").split(","))


def child(url: str, counter: str, n: int, concurrency: int, case: str, history_url: str) -> None:
    import callq
    from callq.results import writer

    r = redis.Redis.from_url(REDIS)
    plugin = callq.history.enable(history_url) if case == "history" else None
    if case == "noop":
        class Noop:
            @callq.hookimpl
            def callq_after_call(self, call: object) -> None:
                pass

        callq.register(Noop())

    @callq.task(QUEUE, broker=url, concurrency=concurrency, results=None if case == "results" else False)
    def work(i: int, name: str) -> int:
        r.incr(counter)
        return i

    started = time.perf_counter()
    work.consume()
    wait_for_count(r, counter, n)
    if plugin is not None:
        plugin.flush(60)
    writer.flush(60)
    elapsed = time.perf_counter() - started
    work.stop()
    callq.stop_all()
    extra = {}
    if plugin is not None:
        extra["history_rows"] = plugin.written
    print(json.dumps({"rate": n / elapsed, **extra}), flush=True)


import callq.history  # noqa: E402,F401 - callq.history.enable in the child


def run_case(case: str, url: str, conn: Connection, r: redis.Redis, counter: str, n: int,
             concurrency: int, history_url: str) -> dict:
    for start in range(0, n, 1000):
        conn.publish(QUEUE, [encode({"i": i, "name": "x" * 40}, new_meta()) for i in range(start, min(n, start + 1000))])
    r.delete(counter)
    try:
        out = subprocess.run([sys.executable, __file__, "--child", url, counter, str(n), str(concurrency), case,
                              history_url], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the {case} worker did not run every call within 120s; was Redis restarted "
                           "meanwhile (it keeps nothing on disk here)?") from None
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--json", action="store_true", help="print the CALLQ_BENCH_JSON line for bench/run_all.py")
    ap.add_argument("--child", nargs=6)
    args = ap.parse_args()
    if args.child:
        url, counter, n, concurrency, case, history_url = args.child
        child(url, counter, int(n), int(concurrency), case, history_url)
        return
    prefix = f"cqbench-{uuid.uuid4().hex[:8]}"
    url = f"{REDIS}?prefix={prefix}"
    r = redis.Redis.from_url(REDIS)
    conn = Connection(url)
    best = dict.fromkeys(("off", "history", "results", *CASES), 1.0)
    per_round: list[dict[str, float]] = []
    tmp = tempfile.mkdtemp(prefix="callq-bench-")
    try:
        for rnd in range(args.rounds):
            per_round.append({})
            for case in CASES:
                history_url = f"sqlite:///{os.path.join(tmp, f'history-{rnd}.db')}"
                res = run_case(case, url, conn, r, f"{prefix}:counter", args.calls, args.concurrency, history_url)
                if case == "history" and res.get("history_rows") != args.calls:
                    raise RuntimeError(f"history wrote {res.get('history_rows')} rows for {args.calls} calls")
                best[case] = max(best[case], res["rate"])
                per_round[-1][case] = res["rate"]
                print(f"  round {rnd} {case}: {res['rate']:,.0f}/s", file=sys.stderr)
    finally:
        conn.close()
        keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            r.delete(*keys)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    rows = [
        {"bench": "results", "case": "redis worker, history on (raw = history off)", "callq": round(best["history"], 1),
         "raw": round(best["off"], 1), "unit": "calls/s"},
        {"bench": "results", "case": "redis worker, results on (raw = results off)", "callq": round(best["results"], 1),
         "raw": round(best["off"], 1), "unit": "calls/s"},
    ]
    print(f"{args.calls} calls per round, best of {args.rounds}, concurrency {args.concurrency}, "
          f"{os.cpu_count()} CPUs")
    for row in rows:
        print(f"{row['case']:<48} {row['callq']:>9,.0f}/s  vs {row['raw']:>9,.0f}/s  ratio {row['callq'] / row['raw']:.2f}")
    for case in CASES:
        if case != "off":
            ratios = sorted(r[case] / r["off"] for r in per_round if "off" in r)
            print(f"{case} / off per round (same minute): {', '.join(f'{x:.2f}' for x in ratios)}; "
                  f"median {ratios[len(ratios) // 2]:.2f}")
    if args.json:
        print("CALLQ_BENCH_JSON " + json.dumps(rows))


if __name__ == "__main__":
    main()
