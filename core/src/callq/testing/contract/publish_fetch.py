"""Contract mixin: publish, fetch, size and purge: what every broker does, whatever it claims."""

from __future__ import annotations

import json
import threading
import time

from ...broker import Capabilities, Connection
from .base import ContractBase, _settle, drain, fresh_queue_name


class AbstractPublishFetchTests(ContractBase):
    """Publish, fetch, size and purge: what every broker does, whatever it claims."""

    def test_capabilities_record(self, caps: Capabilities) -> None:
        assert isinstance(caps, Capabilities)
        assert caps.redelivery_timeout >= 0

    def test_round_trip(self, connection: Connection, queue: str) -> None:
        body = json.dumps({"a": 3, "b": 6}).encode()
        assert connection.publish(queue, [body]) == 1
        got = drain(connection, queue, 1)
        assert [d.body for d in got] == [body]
        assert got[0].queue == queue
        assert _settle(connection, queue) == []

    def test_batch_publish(self, connection: Connection, queue: str) -> None:
        bodies = [f"m{i}".encode() for i in range(500)]
        assert connection.publish(queue, bodies) == 500
        got = drain(connection, queue, 500)
        assert sorted(d.body for d in got) == sorted(bodies)

    def test_fetch_respects_max_n(self, connection: Connection, queue: str) -> None:
        connection.publish(queue, [b"x"] * 10)
        first = connection.fetch(queue, 3, 5.0)
        assert 1 <= len(first) <= 3
        connection.ack(first)
        rest = drain(connection, queue, 10 - len(first))
        assert len(first) + len(rest) == 10

    def test_fetch_on_empty_queue_returns_empty_after_timeout(self, connection: Connection, queue: str) -> None:
        started = time.monotonic()
        assert connection.fetch(queue, 10, 0.5) == []
        assert time.monotonic() - started < 5.0

    def test_fetch_wakes_when_a_message_arrives(self, broker_url: str, connection: Connection, queue: str) -> None:
        producer = self.open(broker_url)
        try:
            timer = threading.Timer(0.3, producer.publish, args=(queue, [b"late"]))
            timer.start()
            started = time.monotonic()
            got = drain(connection, queue, 1, timeout=10)
            timer.join()
            assert [d.body for d in got] == [b"late"]
            assert time.monotonic() - started < 8.0
        finally:
            producer.close()

    def test_size_and_purge(self, connection: Connection, queue: str, caps: Capabilities) -> None:
        connection.publish(queue, [b"s"] * 7)
        if caps.exact_size:
            deadline = time.monotonic() + 5
            while connection.size(queue) != 7 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert connection.size(queue) == 7
        else:
            assert connection.size(queue) >= 0
        connection.purge(queue)
        if caps.exact_size:
            assert connection.size(queue) == 0
        assert _settle(connection, queue) == []

    def test_queues_are_isolated(self, broker_url: str, connection: Connection, queue: str) -> None:
        other_queue = fresh_queue_name()
        self.prime(connection, other_queue)
        try:
            connection.publish(queue, [b"mine"])
            connection.publish(other_queue, [b"theirs"])
            assert [d.body for d in drain(connection, queue, 1)] == [b"mine"]
            assert _settle(connection, queue) == []
            assert [d.body for d in drain(connection, other_queue, 1)] == [b"theirs"]
        finally:
            connection.purge(other_queue)

    def test_unicode_and_one_megabyte_bodies(self, connection: Connection, queue: str) -> None:
        text = json.dumps({"s": "héllo wörld — 你好 — 🚀"}, ensure_ascii=False).encode()
        big = json.dumps({"blob": "x" * (1024 * 1024)}).encode()
        connection.publish(queue, [text])
        connection.publish(queue, [big])
        got = drain(connection, queue, 2, timeout=20)
        assert sorted(d.body for d in got) == sorted([text, big])

    def test_close_is_idempotent(self, broker_url: str) -> None:
        conn = self.open(broker_url)
        conn.close()
        conn.close()
        assert conn.closed

    def test_heartbeat_returns_a_count(self, connection: Connection, queue: str) -> None:
        connection.publish(queue, [b"hb"])
        got = drain(connection, queue, 1, ack=False)
        assert isinstance(connection.heartbeat(), int)
        connection.ack(got)
