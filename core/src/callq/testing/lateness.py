"""How late a broker's native delays arrive: for brokers that claim ``native_delay``.

A producer thread publishes messages with delays of 0.1 to 0.4 s at irregular moments while
a consumer fetches the way a worker does (``fetch(queue, 100, 1.0)`` in a loop), so a fetch
is usually blocked when a delayed message is published: the broker must notice it and hand
it out on time, not when the blocked fetch ends.

    report = measure_delay_lateness("redis://127.0.0.1:6379/0", messages=80)
    print(report)               # median and p99 lateness in milliseconds
    assert report.p99_ms < 50
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from dataclasses import dataclass

from ..broker import Connection
from .contract import fresh_queue_name


@dataclass(frozen=True)
class Lateness:
    url: str
    messages: int
    received: int
    median_ms: float
    p99_ms: float
    max_ms: float
    early: int  # messages handed out before their due time (more than 5 ms early)

    def __str__(self) -> str:
        return (f"{self.url}: {self.received}/{self.messages} delayed messages, lateness median "
                f"{self.median_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, max {self.max_ms:.1f} ms, "
                f"{self.early} early")


def measure_delay_lateness(url: str, messages: int = 80, *, min_delay: float = 0.1, max_delay: float = 0.4,
                           spread: float = 2.0, seed: int = 9) -> Lateness:
    """Publish ``messages`` delayed messages over ``spread`` seconds; measure arrival - due time."""
    rnd = random.Random(seed)
    queue = fresh_queue_name("cq-lateness")
    producer, consumer = Connection(url), Connection(url)
    late: list[float] = []

    def produce() -> None:
        start = time.monotonic()
        for i in range(messages):
            at = start + spread * i / messages + rnd.uniform(0, spread / messages)
            time.sleep(max(0.0, at - time.monotonic()))
            delay = rnd.uniform(min_delay, max_delay)
            producer.publish(queue, [json.dumps({"due": time.time() + delay}).encode()], delay=delay)

    try:
        if not consumer.capabilities.native_delay:
            raise ValueError(f"{url} has no native delay")
        consumer.fetch(queue, 1, 0.01)  # subscribe first (brokers that need it)
        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        deadline = time.monotonic() + spread + max_delay + 10
        while len(late) < messages and time.monotonic() < deadline:
            got = consumer.fetch(queue, 100, 1.0)
            now = time.time()
            for d in got:
                late.append(now - json.loads(d.body)["due"])
            if got:
                consumer.ack(got)
        thread.join(5)
    finally:
        try:
            consumer.purge(queue)
        finally:
            producer.close()
            consumer.close()
    ms = sorted(x * 1000 for x in late) or [float("inf")]
    return Lateness(url=str(consumer.url), messages=messages, received=len(late),
                    median_ms=statistics.median(ms), p99_ms=ms[min(len(ms) - 1, int(len(ms) * 0.99))],
                    max_ms=ms[-1], early=sum(1 for x in ms if x < -5))
