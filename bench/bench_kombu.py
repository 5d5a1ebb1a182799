"""callq-kombu beside raw kombu doing the same work one by one, per transport (redis, amqp).

    .venv/bin/python bench/bench_kombu.py [--n 3000] [--transports redis,amqp] [--json]

Rows (ratio = callq / raw): publish 1-by-1 (``publish(queue, [body])`` vs ``Producer.publish``),
publish batched (500 bodies per call vs the raw one-by-one loop), consume (``fetch(100)`` +
``ack(batch)`` vs a raw ``Consumer`` acking each message in its callback). ``--json`` also
prints the rows for bench/run_all.py (bench ``kombu+redis``, ``kombu+amqp``).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

import kombu
import redis

from callq.broker import Connection

BODY = b'{"i":1,"name":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx","_callq":{"id":"0123456789abcdef"}}'
RAW = {"redis": "redis://127.0.0.1:6379/0", "amqp": "amqp://guest:guest@127.0.0.1:5672//"}


def raw_rates(url: str, queue: str, n: int, options: dict) -> tuple[float, float]:
    with kombu.Connection(url, transport_options=options) as conn:
        q = kombu.Queue(queue, routing_key=queue, durable=True)
        producer = conn.Producer(serializer=None, exchange=kombu.Exchange(""))
        q(conn.channel()).declare()
        started = time.perf_counter()
        for _ in range(n):
            producer.publish(BODY, routing_key=queue, content_type="application/json",
                             content_encoding="binary", delivery_mode=2)
        pub = n / (time.perf_counter() - started)
        got = [0]

        def on_message(message: kombu.Message) -> None:
            message.ack()
            got[0] += 1

        with conn.Consumer([q], on_message=on_message, prefetch_count=100):
            started = time.perf_counter()
            while got[0] < n:
                conn.drain_events(timeout=5)
            con = n / (time.perf_counter() - started)
        q(conn.channel()).delete()
    return pub, con


def callq_rates(url: str, queue: str, n: int) -> tuple[float, float, float]:
    conn = Connection(url)
    try:
        started = time.perf_counter()
        for _ in range(n):
            conn.publish(queue, [BODY])
        single = n / (time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(0, n, 500):
            conn.publish(queue, [BODY] * 500)
        batched = (n // 500 * 500) / (time.perf_counter() - started)
        total, got = n + n // 500 * 500, 0
        started = time.perf_counter()
        while got < total:
            batch = conn.fetch(queue, 100, 5.0)
            if not batch:
                break
            conn.ack(batch)
            got += len(batch)
        consume = got / (time.perf_counter() - started)
        conn.purge(queue)
    finally:
        conn.close()
    return single, batched, consume


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--transports", default="redis,amqp")
    ap.add_argument("--json", action="store_true", help="also print the rows for bench/run_all.py")
    args = ap.parse_args()
    rows = []
    print(f"{'transport':<10}{'row':<24}{'callq/s':>10}{'raw kombu/s':>13}{'ratio':>8}")
    for transport in args.transports.split(","):
        tag = uuid.uuid4().hex[:8]
        prefix = f"bench-kombu-{tag}:"
        options = {"global_keyprefix": prefix} if transport == "redis" else {"confirm_publish": True}
        url = f"kombu+{RAW[transport]}" + (f"?key_prefix={prefix}" if transport == "redis" else "?queue_expires=120")
        raw_pub, raw_con = raw_rates(RAW[transport], f"bench-raw-{tag}", args.n, options)
        single, batched, consume = callq_rates(url, f"bench-cq-{tag}", args.n)
        for row, mine, theirs in (("publish 1-by-1", single, raw_pub), ("publish batched (500)", batched, raw_pub),
                                  ("consume fetch(100)+ack", consume, raw_con)):
            print(f"{transport:<10}{row:<24}{mine:>10,.0f}{theirs:>13,.0f}{mine / theirs:>8.2f}")
            rows.append({"bench": f"kombu+{transport}", "case": row, "callq": mine, "raw": theirs,
                         "unit": "calls/s"})
        if transport == "redis":
            client = redis.Redis.from_url(RAW["redis"])
            keys = list(client.scan_iter(match=f"{prefix}*"))
            if keys:
                client.delete(*keys)
            client.close()
    if args.json:
        print("CALLQ_BENCH_JSON " + json.dumps(rows), flush=True)


if __name__ == "__main__":
    main()
