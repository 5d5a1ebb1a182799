"""callq-redis on a local 6-node Redis Cluster against raw redis-py ``RedisCluster``, same run.

    .venv/bin/python bench/bench_redis_cluster.py [--json] [--rounds 3]

Starts its own cluster (callq_redis.local, ports from 7100) and stops it at the end.
Rows (ratio = callq / raw, higher is better):

* publish 1-by-1: ``publish(queue, [body])`` vs a raw ``LPUSH`` loop through ``RedisCluster``.
* publish 1-by-1, wait=1: the same with the URL's ``wait=1`` vs raw ``LPUSH`` + ``WAIT 1``
  pipelined on the key's primary (what a careful raw client does for the same safety).
* publish batched (1000/call) vs raw pipelined ``LPUSH``.
* consume loop: ``fetch(100)`` + decode + ``ack`` (reliable mode) vs raw ``RPOP key 100`` + ``json.loads``,
  without acks (what at-least-once costs: a Lua claim into the in-flight hash and an HDEL).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Callable

from redis.cluster import RedisCluster

from callq.broker import Connection
from callq.message import decode, encode, new_meta
from callq_redis.local import local_cluster

QUEUE = "bench"


def body(i: int) -> bytes:
    return encode({"i": i, "name": "x" * 40}, new_meta())


def rate(fn: Callable[[], int]) -> float:
    started = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--single", type=int, default=2000)
    ap.add_argument("--batched", type=int, default=30000)
    ap.add_argument("--consume", type=int, default=6000)
    args = ap.parse_args()
    rows: list[dict[str, object]] = []
    with local_cluster() as cluster:
        prefix = f"cqbench-{uuid.uuid4().hex[:6]}"
        conn = Connection(cluster.url(prefix=prefix))
        safe = Connection(cluster.url(prefix=prefix, wait=1))
        raw = RedisCluster(host="127.0.0.1", port=cluster.ports[0])
        raw_key = f"{prefix}:{{{QUEUE}}}:raw"  # same hash tag as callq's keys: the same shard
        node = raw.get_redis_connection(raw.get_node_from_key(raw_key))

        def clear() -> None:
            conn.purge(QUEUE)
            raw.delete(raw_key)

        def raw_wait_single(n: int) -> int:
            for i in range(n):
                pipe = node.pipeline(transaction=False)
                pipe.lpush(raw_key, body(i))
                pipe.execute_command("WAIT", 1, 1000)
                pipe.execute()
            return n

        def raw_batched(n: int) -> int:
            for start in range(0, n, 1000):
                pipe = raw.pipeline(transaction=False)
                for i in range(start, min(n, start + 1000)):
                    pipe.lpush(raw_key, body(i))
                pipe.execute()
            return n

        def callq_batched(n: int) -> int:
            for start in range(0, n, 1000):
                conn.publish(QUEUE, [body(i) for i in range(start, min(n, start + 1000))])
            return n

        def raw_consume(n: int) -> int:
            got = 0
            while got < n:
                items = raw.rpop(raw_key, 100) or []
                for item in items:
                    json.loads(item)
                got += len(items)
            return got

        def callq_consume(n: int) -> int:
            got = 0
            while got < n:
                ds = conn.fetch(QUEUE, 100, 1.0)
                for d in ds:
                    decode(d.body)
                conn.ack(ds)
                got += len(ds)
            return got

        def fill(n: int) -> None:
            clear()
            callq_batched(n)
            raw_batched(n)

        cases: list[tuple[str, Callable[[int], int], Callable[[int], int], int, Callable[[int], None] | None]] = [
            ("publish 1-by-1", lambda n: [conn.publish(QUEUE, [body(i)]) for i in range(n)] and n,
             lambda n: [raw.lpush(raw_key, body(i)) for i in range(n)] and n, args.single, None),
            ("publish 1-by-1, wait=1", lambda n: [safe.publish(QUEUE, [body(i)]) for i in range(n)] and n,
             raw_wait_single, args.single, None),
            ("publish batched (1000/call)", callq_batched, raw_batched, args.batched, None),
            ("consume loop (fetch 100 + ack)", callq_consume, raw_consume, args.consume, fill),
        ]
        try:
            for name, ours, theirs, n, setup in cases:
                per = max(1, n // args.rounds)
                best_ours = best_raw = 0.0
                for _ in range(args.rounds):
                    if setup:
                        setup(per)
                    best_raw = max(best_raw, rate(lambda f=theirs, k=per: f(k)))
                    best_ours = max(best_ours, rate(lambda f=ours, k=per: f(k)))
                    if not setup:
                        clear()
                rows.append({"bench": "redis_cluster", "case": name, "callq": round(best_ours, 1),
                             "raw": round(best_raw, 1), "unit": "calls/s"})
                if not args.json:
                    print(f"{name:<32} {best_ours:>10,.0f}/s   raw {best_raw:>10,.0f}/s   "
                          f"ratio {best_ours / best_raw:5.2f}", flush=True)
        finally:
            clear()
            conn.close()
            safe.close()
            raw.close()
    if args.json:
        print("CALLQ_BENCH_JSON " + json.dumps(rows))


if __name__ == "__main__":
    main()
