"""callq-mqtt beside raw paho-mqtt doing the same work, same machine, same run.

    .venv/bin/python bench/bench_mqtt.py [--n 5000] [--json]

Rows (ratio = callq / raw): publish 1-by-1 (QoS 1, each waits for its PUBACK) vs paho
``publish`` + ``wait_for_publish``; publish batched (500 bodies per call, PUBACKs awaited after
the batch) vs the same raw one-by-one loop; consume (messages through a shared subscription
taken with ``fetch(100)``) vs raw paho ``on_message`` counting, both while a producer publishes.
``--json`` also prints the rows for bench/run_all.py (bench ``mqtt``).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from callq.broker import Connection

BODY = b'{"i":1,"name":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx","_callq":{"id":"0123456789abcdef"}}'


def raw_client() -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", 1883)
    c.loop_start()
    return c


def raw_rates(topic: str, n: int) -> tuple[float, float]:
    pub, sub = raw_client(), raw_client()
    got = [0]
    done = threading.Event()

    def on_message(_c, _u, _m) -> None:
        got[0] += 1
        if got[0] >= n:
            done.set()

    sub.on_message = on_message
    sub.subscribe(f"$share/bench/{topic}", qos=1)
    time.sleep(0.3)
    started = time.perf_counter()
    for _ in range(n):
        pub.publish(topic, BODY, qos=1).wait_for_publish()
    publish = n / (time.perf_counter() - started)
    done.wait(10)
    consume = got[0] / (time.perf_counter() - started)
    for c in (pub, sub):
        c.disconnect()
        c.loop_stop()
    return publish, consume


def callq_rates(topic: str, n: int) -> tuple[float, float, float]:
    group = f"bench-{uuid.uuid4().hex[:6]}"
    url = f"mqtt://127.0.0.1:1883?qos=1&group={group}&handback=0"
    producer, consumer = Connection(url), Connection(url)
    try:
        consumer.fetch(topic, 1, 0.2)
        started = time.perf_counter()
        for _ in range(n):
            producer.publish(topic, [BODY])
        single = n / (time.perf_counter() - started)
        got = 0
        while got < n:
            batch = consumer.fetch(topic, 100, 2.0)
            if not batch:
                break
            got += len(batch)
        consume = got / (time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(0, n, 500):
            producer.publish(topic, [BODY] * 500)
        batched = (n // 500 * 500) / (time.perf_counter() - started)
        consumer.purge(topic)
    finally:
        producer.close()
        consumer.close()
    return single, batched, consume


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--json", action="store_true", help="also print the rows for bench/run_all.py")
    args = ap.parse_args()
    tag = uuid.uuid4().hex[:8]
    raw_pub, raw_con = raw_rates(f"bench-raw-{tag}", args.n)
    single, batched, consume = callq_rates(f"bench-cq-{tag}", args.n)
    print(f"{'row':<28}{'callq/s':>10}{'raw paho/s':>12}{'ratio':>8}")
    rows = (("publish 1-by-1 (QoS 1)", single, raw_pub), ("publish batched (500)", batched, raw_pub),
            ("consume (during publish)", consume, raw_con))
    for row, mine, theirs in rows:
        print(f"{row:<28}{mine:>10,.0f}{theirs:>12,.0f}{mine / theirs:>8.2f}")
    if args.json:
        print("CALLQ_BENCH_JSON " + json.dumps([
            {"bench": "mqtt", "case": row, "callq": mine, "raw": theirs, "unit": "calls/s"}
            for row, mine, theirs in rows]), flush=True)


if __name__ == "__main__":
    main()
