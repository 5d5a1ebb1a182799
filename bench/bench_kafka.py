"""callq-kafka beside raw kafka-python (and confluent-kafka) doing the same work, same run.

    .venv/bin/python bench/bench_kafka.py [--n 20000] [--single 300] [--no-kafka09] [--json]

Starts Tansu and Apache Kafka 0.9 itself via callq_kafka.testing (about 30 s in all). Rows:

* publish batched: ``Connection.publish(queue, 1000 bodies)`` (acks=all, waits for every ack)
  vs raw ``KafkaProducer.send`` x1000 + ``flush``.
* publish 1-by-1: one body per call, each waiting for its ack, vs raw ``send().get()``.
* consume: ``fetch(500)`` + ``ack`` (watermark commits) vs a raw ``KafkaConsumer`` in a group
  polling 500 and committing each batch.
* publish batched with ``?client=confluent`` vs raw confluent-kafka ``produce`` x1000 + ``flush``.
* client rows: raw confluent-kafka vs raw kafka-python, same work (the ``callq`` column holds
  confluent-kafka's rate, ``raw`` kafka-python's): is the C client worth offering?
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

from kafka import KafkaConsumer, KafkaProducer

from callq.broker import Connection
from callq_kafka.testing import Server, running

BODY = b'{"i":1,"name":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx","_callq":{"id":"0123456789abcdef"}}'


def topic(tag: str) -> str:
    return f"bench-{tag}-{uuid.uuid4().hex[:8]}"


def kp_args(server: Server) -> dict:
    return {"bootstrap_servers": server.bootstrap, **({"api_version": (0, 9)} if server.name == "kafka09" else {})}


def raw_publish_batched(server: Server, t: str, n: int) -> float:
    p = KafkaProducer(acks=-1, linger_ms=0, **kp_args(server))
    p.send(t, BODY).get(30)  # topic created, metadata known
    started = time.perf_counter()
    for _ in range(0, n, 1000):
        futures = [p.send(t, BODY) for _ in range(1000)]
        p.flush()
        for f in futures:
            f.get(30)
    rate = n / (time.perf_counter() - started)
    p.close()
    return rate


def raw_publish_single(server: Server, t: str, n: int) -> float:
    p = KafkaProducer(acks=-1, linger_ms=0, **kp_args(server))
    p.send(t, BODY).get(30)
    started = time.perf_counter()
    for _ in range(n):
        p.send(t, BODY).get(30)
    rate = n / (time.perf_counter() - started)
    p.close()
    return rate


def raw_consume(server: Server, t: str, n: int) -> float:
    c = KafkaConsumer(t, group_id=f"raw-{t}", enable_auto_commit=False, auto_offset_reset="earliest",
                      session_timeout_ms=6000, heartbeat_interval_ms=1000, max_poll_records=500,
                      **kp_args(server))
    got = 0
    started = None
    deadline = time.monotonic() + 60
    while got < n and time.monotonic() < deadline:
        batch = c.poll(1000, max_records=500)
        if batch:
            started = started or time.perf_counter()  # from the first records: the group join is not work
            got += sum(len(r) for r in batch.values())
            c.commit()
    rate = got / (time.perf_counter() - started) if started else 0.0
    c.close()
    return rate


def callq_publish_batched(conn: Connection, t: str, n: int) -> float:
    conn.publish(t, [BODY])
    started = time.perf_counter()
    for _ in range(0, n, 1000):
        conn.publish(t, [BODY] * 1000)
    return n / (time.perf_counter() - started)


def callq_publish_single(conn: Connection, t: str, n: int) -> float:
    conn.publish(t, [BODY])
    started = time.perf_counter()
    for _ in range(n):
        conn.publish(t, [BODY])
    return n / (time.perf_counter() - started)


def callq_consume(conn: Connection, t: str, n: int) -> float:
    got = 0
    started = None
    deadline = time.monotonic() + 60
    while got < n and time.monotonic() < deadline:
        batch = conn.fetch(t, 500, 1.0)
        if batch:
            started = started or time.perf_counter()
            conn.ack(batch)
            got += len(batch)
    return got / (time.perf_counter() - started) if started else 0.0


def confluent_rows(server: Server, n: int) -> list[tuple[str, float, float]]:
    try:
        from confluent_kafka import Consumer, Producer
    except ImportError:
        return []
    t, t2, t3 = topic("ck"), topic("kp"), topic("cq-ck")
    plain = Connection(f"kafka://{server.bootstrap}/")
    ck = Connection(f"kafka://{server.bootstrap}/?client=confluent")
    try:
        for name in (t, t2):
            plain.publish(name, [BODY])  # create the topics with 4 partitions
        cq_ck = callq_publish_batched(ck, t3, n)
    finally:
        plain.close()
        ck.close()
    p = Producer({"bootstrap.servers": server.bootstrap, "acks": "all", "linger.ms": 1})
    started = time.perf_counter()
    for _ in range(0, n, 1000):
        for _ in range(1000):
            p.produce(t, BODY)
        p.flush(30)
    ck_pub = n / (time.perf_counter() - started)
    c = Consumer({"bootstrap.servers": server.bootstrap, "group.id": f"ck-{t}", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
    c.subscribe([t])
    got, started = 0, None
    deadline = time.monotonic() + 60
    while got < n and time.monotonic() < deadline:
        msgs = c.consume(500, 1.0)
        if msgs:
            started = started or time.perf_counter()
            got += len(msgs)
            c.commit(asynchronous=False)
    ck_con = got / (time.perf_counter() - started) if started else 0.0
    c.close()
    kp_pub = raw_publish_batched(server, t2, n)
    kp_con = raw_consume(server, t2, n)
    return [("publish batched (1000), client=confluent vs raw confluent", cq_ck, ck_pub),
            ("produce 1000s: confluent-kafka vs kafka-python", ck_pub, kp_pub),
            ("consume 500s: confluent-kafka vs kafka-python", ck_con, kp_con)]


def run(server: Server, n: int, single: int) -> list[tuple[str, float, float]]:
    url = f"kafka://{server.bootstrap}/" + ("?api_version=0.9" if server.name == "kafka09" else "")
    conn = Connection(url)
    rows = []
    try:
        raw_t, cq_t = topic("raw"), topic("cq")
        conn.publish(raw_t, [BODY])  # same topic layout for both sides
        rows.append(("publish batched (1000)", callq_publish_batched(conn, cq_t, n),
                     raw_publish_batched(server, raw_t, n)))
        rows.append(("publish 1-by-1", callq_publish_single(conn, cq_t, single),
                     raw_publish_single(server, raw_t, single)))
        rows.append(("consume fetch(500)+ack", callq_consume(conn, cq_t, n), raw_consume(server, raw_t, n)))
    finally:
        conn.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--single", type=int, default=300)
    ap.add_argument("--no-kafka09", action="store_true", help="skip Apache Kafka 0.9 (its JVMs take seconds to start)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    table: list[tuple[str, str, float, float]] = []
    with running("tansu") as tansu:
        table += [("tansu", *row) for row in run(tansu, args.n, args.single)]
        table += [("tansu", *row) for row in confluent_rows(tansu, args.n)]
    if not args.no_kafka09:
        with running("kafka09") as k09:
            table += [("kafka 0.9", *row) for row in run(k09, args.n, args.single)]
    print(f"{'server':<10}{'row':<50}{'callq/s':>12}{'raw/s':>12}{'ratio':>8}")
    for srv, name, mine, theirs in table:
        print(f"{srv:<10}{name:<50}{mine:>12,.0f}{theirs:>12,.0f}{mine / theirs if theirs else 0:>8.2f}")
    if args.json:
        rows = [{"bench": "kafka", "case": f"{srv}: {name}", "callq": round(mine, 1), "raw": round(theirs, 1),
                 "unit": "calls/s"} for srv, name, mine, theirs in table]
        print("CALLQ_BENCH_JSON " + json.dumps(rows))


if __name__ == "__main__":
    main()
