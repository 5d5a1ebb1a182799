"""Contract mixin: delayed publish and requeue (``native_delay``) and priorities (``priority``)."""

from __future__ import annotations

import time

from ...broker import Capabilities, Connection
from .base import ContractBase, drain


class AbstractDelayPriorityTests(ContractBase):
    """Delayed publish and requeue (``native_delay``) and priorities (``priority``)."""

    def test_requeue_with_delay(self, connection: Connection, queue: str, caps: Capabilities) -> None:
        self.require(caps, "acks", "native_delay")
        connection.publish(queue, [b"later"])
        first = drain(connection, queue, 1, ack=False)
        connection.requeue(first, delay=1.5)
        assert connection.fetch(queue, 1, 0.5) == []
        got = drain(connection, queue, 1, timeout=10)
        assert [d.body for d in got] == [b"later"]

    def test_publish_with_delay(self, connection: Connection, queue: str, caps: Capabilities) -> None:
        self.require(caps, "native_delay")
        started = time.monotonic()
        connection.publish(queue, [b"delayed"], delay=1.5)
        connection.publish(queue, [b"now"])
        first = drain(connection, queue, 1)
        assert [d.body for d in first] == [b"now"]
        got = drain(connection, queue, 1, timeout=10)
        assert [d.body for d in got] == [b"delayed"]
        assert time.monotonic() - started >= 1.4

    def test_priority_orders_delivery(self, connection: Connection, queue: str, caps: Capabilities) -> None:
        self.require(caps, "priority")
        connection.publish(queue, [b"low"], priority=1)
        connection.publish(queue, [b"high"], priority=9)
        connection.publish(queue, [b"mid"], priority=5)
        time.sleep(0.2)
        got = drain(connection, queue, 3, batch=1)
        assert [d.body for d in got] == [b"high", b"mid", b"low"]
