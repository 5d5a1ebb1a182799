"""callq-rabbitmq beside raw pika doing the same work, same machine, same run.

    .venv/bin/python bench/bench_rabbitmq.py [--single 1500] [--batched 20000] [--consume 20000] [--json]

Rows (ratio = callq / raw, higher is better):

* publish 1-by-1: ``Connection.publish(queue, [body])`` vs pika ``BlockingChannel.basic_publish``
  in confirm mode, persistent, one message per call (both wait for each confirm).
* publish batched: ``publish(queue, 1000 bodies)`` (pipelined, waits for all confirms) vs the
  same raw one-by-one confirmed loop.
* consume: ``fetch(100)`` + ``ack(batch)`` vs raw ``basic_consume`` (prefetch 100) acking each.

Queues are fresh and deleted at the end. ``--json`` also prints the rows for
bench/run_all.py (bench ``rabbitmq``).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

import pika

from callq.broker import Connection

URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
BODY = b'{"i":1,"name":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx","_callq":{"id":"0123456789abcdef"}}'


def raw_publish(ch, queue: str, n: int) -> float:
    props = pika.BasicProperties(delivery_mode=2)
    started = time.perf_counter()
    for _ in range(n):
        ch.basic_publish("", queue, BODY, props)
    return n / (time.perf_counter() - started)


def raw_consume(ch, queue: str, n: int) -> float:
    ch.basic_qos(prefetch_count=100)
    got = 0
    started = time.perf_counter()
    for method, _props, _body in ch.consume(queue, inactivity_timeout=5):
        if method is None:
            break
        ch.basic_ack(method.delivery_tag)
        got += 1
        if got >= n:
            break
    ch.cancel()
    return got / (time.perf_counter() - started)


def callq_consume(conn: Connection, queue: str, n: int) -> float:
    got = 0
    started = time.perf_counter()
    while got < n:
        batch = conn.fetch(queue, 100, 5.0)
        if not batch:
            break
        conn.ack(batch)
        got += len(batch)
    return got / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--single", type=int, default=1500)
    ap.add_argument("--batched", type=int, default=20000)
    ap.add_argument("--consume", type=int, default=20000)
    ap.add_argument("--json", action="store_true", help="also print the rows for bench/run_all.py")
    args = ap.parse_args()
    raw_q, cq_q = f"bench-raw-{uuid.uuid4().hex[:8]}", f"bench-cq-{uuid.uuid4().hex[:8]}"
    rconn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
    ch = rconn.channel()
    ch.confirm_delivery()
    ch.queue_declare(raw_q, durable=True, arguments={"x-max-priority": 10})
    conn = Connection(URL)
    try:
        rows = []
        raw = raw_publish(ch, raw_q, args.single)
        started = time.perf_counter()
        for _ in range(args.single):
            conn.publish(cq_q, [BODY])
        rows.append(("publish 1-by-1", args.single / (time.perf_counter() - started), raw))
        raw_b = raw_publish(ch, raw_q, args.batched - args.single)
        started = time.perf_counter()
        for _ in range(0, args.batched - args.single, 1000):
            conn.publish(cq_q, [BODY] * 1000)
        done = (args.batched - args.single) // 1000 * 1000
        rows.append(("publish batched (1000)", done / (time.perf_counter() - started), raw_b))
        n = min(args.consume, args.batched - args.single + args.single)
        rows.append(("consume fetch(100)+ack", callq_consume(conn, cq_q, min(n, conn.size(cq_q))),
                     raw_consume(ch, raw_q, n)))
        print(f"{'row':<26}{'callq/s':>12}{'raw pika/s':>14}{'ratio':>8}")
        for name, mine, theirs in rows:
            print(f"{name:<26}{mine:>12,.0f}{theirs:>14,.0f}{mine / theirs:>8.2f}")
        if args.json:
            print("CALLQ_BENCH_JSON " + json.dumps([
                {"bench": "rabbitmq", "case": name, "callq": mine, "raw": theirs, "unit": "calls/s"}
                for name, mine, theirs in rows]), flush=True)
    finally:
        conn.close()
        ch.queue_delete(raw_q)
        ch.queue_delete(cq_q)
        rconn.close()


if __name__ == "__main__":
    main()
