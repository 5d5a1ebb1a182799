"""Publishing: kafka-python's producer, or confluent-kafka's (librdkafka) with ``?client=confluent``.

Both wait until the broker acknowledged every message of a call (``acks=all`` by default),
so a publish that returned is stored. Only the publishing side has the choice: consuming
needs kafka-python's pluggable assignor (see :mod:`callq_kafka.assignor`), which
confluent-kafka's Python API does not offer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from callq.errors import BrokerError, ConfigError


class KafkaPythonProducer:
    def __init__(self, common: dict[str, Any], acks: str, max_bytes: int) -> None:
        self._p = KafkaProducer(acks=-1 if acks == "all" else 1, linger_ms=0, max_request_size=max_bytes, **common)

    def send(self, topic: str, bodies: Sequence[bytes], timeout: float) -> None:
        try:
            futures = [self._p.send(topic, body) for body in bodies]
            self._p.flush(timeout=timeout)
            for fut in futures:
                fut.get(timeout=timeout)
        except KafkaError as exc:
            raise BrokerError(f"publish to {topic} failed: {type(exc).__name__}: {exc}") from exc

    def close(self, timeout: float) -> None:
        self._p.close(timeout=timeout)


class _Batch:
    __slots__ = ("left", "error", "done")

    def __init__(self, n: int) -> None:
        self.left = n
        self.error: str | None = None
        self.done = threading.Event()

    def __call__(self, err: Any, _msg: Any) -> None:  # delivery report, on whichever thread polls
        if err is not None and self.error is None:
            self.error = err.str()
        self.left -= 1
        if self.left <= 0:
            self.done.set()


class ConfluentProducer:
    def __init__(self, hosts: list[str], acks: str, max_bytes: int) -> None:
        try:
            from confluent_kafka import KafkaException, Producer
        except ImportError as exc:
            raise ConfigError("client=confluent needs confluent-kafka: pip install 'callq-kafka[confluent]'") from exc
        self._exc = KafkaException
        self._p = Producer({"bootstrap.servers": ",".join(hosts), "client.id": "callq",
                            "acks": "all" if acks == "all" else "1", "linger.ms": 1,
                            "message.max.bytes": max_bytes, "enable.idempotence": False})
        self._lock = threading.Lock()  # delivery reports count down from several threads

    def send(self, topic: str, bodies: Sequence[bytes], timeout: float) -> None:
        batch = _Batch(len(bodies))
        deadline = time.monotonic() + timeout

        def report(err: Any, msg: Any) -> None:
            with self._lock:
                batch(err, msg)

        try:
            for body in bodies:
                while True:
                    try:
                        self._p.produce(topic, body, on_delivery=report)
                        break
                    except BufferError:  # the local queue is full: let deliveries drain
                        self._p.poll(0.05)
                        if time.monotonic() > deadline:
                            raise BrokerError(f"publish to {topic}: local queue full for {timeout:.0f}s") from None
            while not batch.done.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrokerError(f"publish to {topic}: no acknowledgement within {timeout:.0f}s")
                self._p.flush(min(left, 0.5))
        except self._exc as exc:
            raise BrokerError(f"publish to {topic} failed: {exc}") from exc
        if batch.error is not None:
            raise BrokerError(f"publish to {topic} failed: {batch.error}")

    def close(self, timeout: float) -> None:
        self._p.flush(timeout)
