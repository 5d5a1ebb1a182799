"""qps precision and the elastic pool, on memory:// (the rate gate is broker-agnostic).

    .venv/bin/python bench/qps.py [--seconds 30] [--targets 0.5,10,100,1000] [--no-jump]

For each target rate, calls whose latency is drawn uniformly from 0.01-2 s are consumed
for ``--seconds`` (after a 3 s warm-up); printed: achieved rate, relative error, the worst
single second (count of starts in it vs the target), and threads alive vs the goal
1.2 x qps x mean latency. The jump phase runs qps 100 with 0.01 s latency, then 5 s, then
0.01 s again, and prints threads alive per 5 s to show growth and shrink.
Goals: error <= 1 %; every second within +-10 % (for qps >= 10); threads <= 1.2 x qps x
mean latency; shrink back within 30 s after latency falls.

Not part of ``make bench`` (bench/run_all.py runs bench_*.py only): it measures rate
precision and pool size over minutes, not throughput against a raw client.
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
import uuid

import callq

WARMUP = 3.0


class Latency:
    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    def draw(self) -> float:
        return random.uniform(self.low, self.high)


def run_target(qps: float, seconds: float, latency: Latency) -> None:
    starts: list[float] = []
    total = int(qps * (seconds + WARMUP + 5)) + 10

    @callq.task(f"qps-{uuid.uuid4().hex[:6]}", broker="memory://qps", qps=qps, concurrency=5000,
                keepalive=10.0)
    def work(i: int) -> None:
        starts.append(time.monotonic())
        time.sleep(latency.draw())

    work.push_many((i,) for i in range(total))
    consumer = work.consume()
    t0 = time.monotonic()
    threads: list[int] = []
    while time.monotonic() - t0 < WARMUP + seconds:
        time.sleep(1.0)
        if time.monotonic() - t0 > WARMUP:
            threads.append(consumer.pool.threads)
    work.stop(wait=False)
    begin = t0 + WARMUP
    end = begin + seconds
    inside = [s for s in starts if begin <= s < end]
    rate = len(inside) / seconds
    error = abs(rate - qps) / qps
    if qps >= 1:
        per_second = [sum(1 for s in inside if begin + k <= s < begin + k + 1) for k in range(int(seconds))]
        worst = max(per_second, key=lambda c: abs(c - qps))
        worst_txt = f"{worst} ({(worst - qps) / qps:+.1%})"
    else:
        gaps = [b - a for a, b in zip(inside, inside[1:])]
        worst_txt = f"gap {max(gaps):.3f}s vs {1 / qps:.3f}s" if gaps else "n/a"
    mean_latency = (latency.low + latency.high) / 2
    goal_threads = max(1.0, 1.2 * qps * mean_latency)
    print(f"qps {qps:>7g}: achieved {rate:9.3f}/s  error {error:6.2%}  worst second {worst_txt:>16s}  "
          f"threads max {max(threads):5d} mean {statistics.mean(threads):7.1f} (goal <= {goal_threads:.0f})")
    work.clear()
    consumer.join(30)


def run_jump(seconds_each: float) -> None:
    latency = Latency(0.01, 0.01)
    qps = 100.0

    @callq.task(f"jump-{uuid.uuid4().hex[:6]}", broker="memory://qps", qps=qps, concurrency=5000,
                keepalive=10.0)
    def work(i: int) -> None:
        time.sleep(latency.draw())

    work.push_many((i,) for i in range(int(qps * seconds_each * 4)))
    consumer = work.consume()
    t0 = time.monotonic()
    print(f"jump phase at qps {qps:g}: latency 0.01 s -> 5 s at {seconds_each:.0f}s -> 0.01 s at "
          f"{2 * seconds_each:.0f}s (threads alive every 5 s; goal <= {1.2 * qps * 5:.0f} at 5 s)")
    line = []
    while (now := time.monotonic() - t0) < 3.5 * seconds_each:
        if now >= 2 * seconds_each:
            latency.low = latency.high = 0.01
        elif now >= seconds_each:
            latency.low = latency.high = 5.0
        time.sleep(5.0)
        line.append(f"{time.monotonic() - t0:4.0f}s:{consumer.pool.threads}")
    print("  " + "  ".join(line))
    work.stop(wait=False)
    work.clear()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--targets", default="0.5,10,100,1000")
    parser.add_argument("--no-jump", action="store_true")
    args = parser.parse_args()
    latency = Latency(0.01, 2.0)
    for target in (float(t) for t in args.targets.split(",")):
        run_target(target, args.seconds, latency)
    if not args.no_jump:
        run_jump(20.0)


if __name__ == "__main__":
    threading.stack_size(256 * 1024)
    main()
