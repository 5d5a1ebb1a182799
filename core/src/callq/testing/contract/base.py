"""What every contract mixin shares: the fixtures, capability skipping and helpers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from ...broker import Capabilities, Connection, Delivery


def fresh_queue_name(prefix: str = "cq-test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def drain(conn: Connection, queue: str, expected: int, timeout: float = 15.0, *, ack: bool = True,
          batch: int = 100) -> list[Delivery]:
    """Fetch until ``expected`` deliveries arrived or ``timeout`` passed; ack them unless told not to."""
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        batch_got = conn.fetch(queue, min(batch, expected - len(got)), 0.5)
        if ack and batch_got:
            conn.ack(batch_got)
        got.extend(batch_got)
    return got


def _settle(conn: Connection, queue: str, seconds: float = 0.6) -> list[Delivery]:
    """What else arrives within ``seconds`` (should be nothing)."""
    extra: list[Delivery] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        extra.extend(conn.fetch(queue, 100, max(0.05, deadline - time.monotonic())))
    return extra


class ContractBase:
    """Fixtures the implementer provides or may override, shared by every ``Abstract...Tests`` mixin.

    Optional overrides: ``wait_margin`` (extra seconds allowed on top of the broker's
    ``redelivery_timeout``), ``concurrency_messages``.
    """

    wait_margin: float = 10.0
    concurrency_messages: int = 2000

    @pytest.fixture
    def broker_url(self) -> str:
        raise NotImplementedError("override the broker_url fixture in your Test...Contract class")

    @pytest.fixture
    def connection(self, broker_url: str) -> Iterator[Connection]:
        conn = Connection(broker_url)
        yield conn
        conn.close()

    @pytest.fixture
    def caps(self, connection: Connection) -> Capabilities:
        return connection.capabilities

    @pytest.fixture
    def queue(self, broker_url: str, connection: Connection) -> Iterator[str]:
        name = fresh_queue_name()
        self.prime(connection, name)
        yield name
        self.cleanup(broker_url, name)

    def cleanup(self, broker_url: str, queue: str) -> None:
        """Remove what a test left on ``queue``; override to delete the queue itself."""
        cleaner = Connection(broker_url)
        try:
            cleaner.purge(queue)
            cleaner.purge(f"{queue}.dlq")
        finally:
            cleaner.close()

    def prime(self, conn: Connection, queue: str) -> list[Delivery]:
        """Make ``queue`` receive messages (brokers without backlog need a subscriber first);
        what that first fetch got, if anything was published already."""
        if not conn.capabilities.backlog:
            return conn.fetch(queue, 1, 0.2)
        return []

    def open(self, url: str) -> Connection:
        return Connection(url)

    @staticmethod
    def require(caps: Capabilities, *names: str) -> None:
        missing = [n for n in names if not getattr(caps, n)]
        if missing:
            pytest.skip(f"broker does not claim {', '.join(missing)}")
