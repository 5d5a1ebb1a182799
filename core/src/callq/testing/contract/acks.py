"""Contract mixin: acks, requeue and redelivery of what a closed or dead consumer held (``acks``, ``persistent``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest

from ...broker import Capabilities, Connection
from .base import ContractBase, _settle, drain

_CHILD_FETCH = r"""
import sys, time
from callq.broker import Connection
url, queue, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
conn = Connection(url)
got = []
deadline = time.monotonic() + 30
while len(got) < n and time.monotonic() < deadline:
    got += conn.fetch(queue, n - len(got), 0.5)
print(len(got), flush=True)
time.sleep(600)
"""


class AbstractAckTests(ContractBase):
    """Acks, requeue and redelivery of what a closed or dead consumer held (``acks``, ``persistent``)."""

    def test_ack_removes_for_good(self, broker_url: str, connection: Connection, queue: str, caps: Capabilities) -> None:
        self.require(caps, "acks")
        connection.publish(queue, [b"once"])
        got = drain(connection, queue, 1)
        assert len(got) == 1
        connection.close()
        other = self.open(broker_url)
        try:
            assert _settle(other, queue, 1.0) == []
        finally:
            other.close()

    def test_acks_sent_with_a_fetch_are_done(self, broker_url: str, connection: Connection, queue: str,
                                             caps: Capabilities) -> None:
        # ``Connection.ack_fetch``: the broker's ``callq_ack_fetch`` where it has one (one round
        # trip), else ack then fetch; either way the acks hold and the fetch gets the next ones
        self.require(caps, "acks")
        assert connection.acks_with_fetch == bool(connection.hook.callq_ack_fetch.get_hookimpls())
        connection.publish(queue, [b"a1", b"a2", b"a3"])
        first = drain(connection, queue, 2, ack=False)
        assert len(first) == 2
        rest = connection.ack_fetch(first, queue, 5, 5.0)
        assert len(rest) == 1 and {d.body for d in [*first, *rest]} == {b"a1", b"a2", b"a3"}
        assert connection.ack_fetch(rest, queue, 5, 0.2) == []
        connection.close()  # what was not acked would come back now
        other = self.open(broker_url)
        try:
            assert _settle(other, queue, 1.0) == []
        finally:
            other.close()

    def test_results_carried_with_acks_reach_the_store(self, broker_url: str, connection: Connection, queue: str,
                                                       caps: Capabilities) -> None:
        # a broker whose ``results_with_acks`` offers it writes result records in its ack round
        # trips (``results=`` of ack / ack_fetch): readable from the store at that URL, in order,
        # with their TTL, and a waiter of the call wakes
        self.require(caps, "acks")
        if not connection.carries_results(broker_url):
            pytest.skip("broker does not write results with its acks (results_with_acks)")
        from ...results.store import open_store

        store = open_store(broker_url)
        ids = [f"carried-{uuid.uuid4().hex}" for _ in range(5)]

        def item(i: int, status: str, ttl: float = 60.0) -> tuple[str, dict[str, Any], float]:
            return ids[i], {"id": ids[i], "status": status, "result": i, "error": None}, ttl

        connection.publish(queue, [b"r1", b"r2", b"r3"])
        first = drain(connection, queue, 2, ack=False)
        assert len(first) == 2
        rest = connection.ack_fetch(first, queue, 5, 5.0, [item(0, "running"), item(0, "done"), item(1, "dead")])
        assert [d.body for d in rest] == [b"r3"]
        assert store.get(ids[0]) == {"id": ids[0], "status": "done", "result": 0, "error": None}
        assert store.get(ids[1])["status"] == "dead"  # type: ignore[index]
        waited: list[Any] = []
        waiter = threading.Thread(target=lambda: waited.append(store.wait(ids[2], 10.0)))
        waiter.start()
        time.sleep(0.3)
        assert connection.ack(rest, [item(2, "done"), item(3, "done", ttl=0.3)]) == 1
        waiter.join(10)
        assert waited and waited[0]["result"] == 2
        assert connection.ack_fetch([], queue, 5, 0.1, [item(4, "skipped")]) == []  # records alone
        assert store.get(ids[4])["status"] == "skipped"  # type: ignore[index]
        time.sleep(0.6)
        assert store.get(ids[3]) is None  # its TTL ran out
        connection.close()
        other = self.open(broker_url)
        try:
            assert _settle(other, queue, 1.0) == []  # the acks that carried them held
        finally:
            other.close()

    def test_requeue_returns_the_message(self, connection: Connection, queue: str, caps: Capabilities) -> None:
        self.require(caps, "acks")
        connection.publish(queue, [b"again"])
        first = drain(connection, queue, 1, ack=False)
        assert len(first) == 1
        assert connection.requeue(first) == 1
        second = drain(connection, queue, 1)
        assert [d.body for d in second] == [b"again"]
        assert _settle(connection, queue) == []

    def test_close_returns_unacked(self, broker_url: str, connection: Connection, queue: str, caps: Capabilities) -> None:
        self.require(caps, "acks")
        connection.publish(queue, [b"u1", b"u2"])
        taker = self.open(broker_url)
        taken = drain(taker, queue, 2, ack=False)
        assert len(taken) == 2
        taker.close()
        back = drain(connection, queue, 2, timeout=caps.redelivery_timeout + self.wait_margin)
        assert sorted(d.body for d in back) == [b"u1", b"u2"]

    def test_dead_consumer_messages_come_back(self, broker_url: str, connection: Connection, queue: str,
                                             caps: Capabilities) -> None:
        self.require(caps, "acks", "distributed")
        bodies = [f"d{i}".encode() for i in range(20)]
        connection.publish(queue, bodies)
        child = subprocess.Popen([sys.executable, "-c", _CHILD_FETCH, broker_url, queue, "20"],
                                 stdout=subprocess.PIPE, text=True)
        try:
            line = child.stdout.readline() if child.stdout else ""
            assert line.strip() == "20", f"child fetched {line!r}"
            assert connection.fetch(queue, 20, 0.3) == [], "messages visible while their consumer lives"
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        back = drain(connection, queue, 20, timeout=caps.redelivery_timeout + self.wait_margin)
        assert sorted(d.body for d in back) == sorted(bodies)

    def test_heartbeats_keep_messages_past_the_lease(self, broker_url: str, connection: Connection,
                                                     queue: str, caps: Capabilities) -> None:
        """A slow consumer that keeps heartbeating keeps its messages (no fixed visibility timeout)."""
        self.require(caps, "acks", "distributed")
        connection.publish(queue, [b"slow"])
        holder = self.open(broker_url)
        try:
            held = drain(holder, queue, 1, ack=False)
            assert len(held) == 1
            hold_for = min(caps.redelivery_timeout * 1.5 + 1.0, 20.0)
            deadline = time.monotonic() + hold_for
            interval = max(0.05, min(holder.heartbeat_interval, 1.0))
            while time.monotonic() < deadline:
                holder.heartbeat()
                assert connection.fetch(queue, 1, interval) == [], "redelivered while its consumer heartbeats"
            holder.ack(held)
        finally:
            holder.close()
        assert _settle(connection, queue, 1.0) == []

    def test_messages_survive_reconnect(self, broker_url: str, connection: Connection, queue: str,
                                        caps: Capabilities) -> None:
        self.require(caps, "persistent")
        connection.publish(queue, [b"kept"])
        connection.close()
        again = self.open(broker_url)
        try:
            assert [d.body for d in drain(again, queue, 1)] == [b"kept"]
        finally:
            again.close()
