"""The broker contract: what every broker plugin must do, checked against a real server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest

from ..broker import Capabilities, Connection, Delivery
from .poison import PoisonContract


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

_CHILD_PUBLISH = r"""
import sys
from callq.broker import Connection
url, queue, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
conn = Connection(url)
conn.publish(queue, [("from-child-%d" % i).encode() for i in range(n)])
conn.close()
print("ok", flush=True)
"""


class BrokerContract(PoisonContract):
    """Subclass as ``Test<Broker>Contract`` and override the ``broker_url`` fixture.

    Optional overrides: ``wait_margin`` (extra seconds allowed on top of the broker's
    ``redelivery_timeout``), ``concurrency_messages``.
    """

    wait_margin: float = 10.0
    concurrency_messages: int = 2000

    # --- fixtures the implementer provides or may override -------------------------------

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

    def prime(self, conn: Connection, queue: str) -> None:
        """Make ``queue`` receive messages (brokers without backlog need a subscriber first)."""
        if not conn.capabilities.backlog:
            conn.fetch(queue, 1, 0.2)

    def open(self, url: str) -> Connection:
        return Connection(url)

    @staticmethod
    def require(caps: Capabilities, *names: str) -> None:
        missing = [n for n in names if not getattr(caps, n)]
        if missing:
            pytest.skip(f"broker does not claim {', '.join(missing)}")

    # --- the contract ------------------------------------------------------------------------

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

    def test_requeue_returns_the_message(self, connection: Connection, queue: str, caps: Capabilities) -> None:
        self.require(caps, "acks")
        connection.publish(queue, [b"again"])
        first = drain(connection, queue, 1, ack=False)
        assert len(first) == 1
        assert connection.requeue(first) == 1
        second = drain(connection, queue, 1)
        assert [d.body for d in second] == [b"again"]
        assert _settle(connection, queue) == []

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

    def test_other_process_sees_published_messages(self, broker_url: str, connection: Connection,
                                                  queue: str, caps: Capabilities) -> None:
        self.require(caps, "distributed")
        out = subprocess.run([sys.executable, "-c", _CHILD_PUBLISH, broker_url, queue, "50"],
                             capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "ok", out.stderr
        got = drain(connection, queue, 50)
        assert sorted(d.body for d in got) == sorted(f"from-child-{i}".encode() for i in range(50))

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

    def test_concurrent_producers_and_consumers_lose_and_duplicate_nothing(
        self, broker_url: str, connection: Connection, queue: str, caps: Capabilities
    ) -> None:
        n_prod, n_cons = 4, 4
        per = self.concurrency_messages // n_prod
        total = per * n_prod
        seen: Counter[bytes] = Counter()
        lock = threading.Lock()
        stop = threading.Event()
        errors: list[BaseException] = []

        def consume() -> None:
            conn = self.open(broker_url) if caps.distributed else connection
            try:
                self.prime(conn, queue)
                while not stop.is_set():
                    got = conn.fetch(queue, 50, 0.2)
                    if got:
                        conn.ack(got)
                        with lock:
                            seen.update(d.body for d in got)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
            finally:
                if conn is not connection:
                    conn.close()

        def produce(p: int) -> None:
            conn = self.open(broker_url)
            try:
                for start in range(0, per, 25):
                    conn.publish(queue, [f"p{p}-{i}".encode() for i in range(start, min(per, start + 25))])
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
            finally:
                conn.close()

        if caps.distributed:
            connection.close()  # an idle subscriber (see prime) must not take a share
        consumers = [threading.Thread(target=consume) for _ in range(n_cons)]
        for t in consumers:
            t.start()
        time.sleep(0.3)
        producers = [threading.Thread(target=produce, args=(p,)) for p in range(n_prod)]
        for t in producers:
            t.start()
        for t in producers:
            t.join()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                if len(seen) >= total:
                    break
            time.sleep(0.1)
        time.sleep(0.5)
        stop.set()
        for t in consumers:
            t.join()
        assert not errors, errors
        expected = {f"p{p}-{i}".encode() for p in range(n_prod) for i in range(per)}
        assert set(seen) == expected, f"lost {len(expected - set(seen))}"
        dupes = sum(c - 1 for c in seen.values() if c > 1)
        assert dupes == 0, f"{dupes} duplicates without any crash"

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

    # --- shared state store (claimed by ``shared_state``) ----------------------------------

    def test_state_store_put_get_only_new_delete(self, connection: Connection, caps: Capabilities) -> None:
        self.require(caps, "shared_state")
        st = connection.state
        key = fresh_queue_name("cq-state")
        try:
            assert st.get(key) is None
            assert st.put(key, "v1", only_new=True) is True
            assert st.put(key, "v2", only_new=True) is False
            assert st.get(key) == "v1"
            assert st.put(key, "v3") is True
            assert st.get(key) == "v3"
            assert st.delete(key) is True
            assert st.delete(key) is False
            assert st.get(key) is None
        finally:
            st.delete(key)

    def test_state_store_ttl_expires(self, connection: Connection, caps: Capabilities) -> None:
        self.require(caps, "shared_state")
        st = connection.state
        key = fresh_queue_name("cq-state")
        assert st.put(key, "x", ttl=1.0, only_new=True)
        assert st.get(key) == "x"
        time.sleep(1.6)
        assert st.get(key) is None
        assert st.put(key, "y", ttl=30, only_new=True), "an expired key counts as absent"
        st.delete(key)

    def test_state_store_incr_and_scan(self, connection: Connection, caps: Capabilities) -> None:
        self.require(caps, "shared_state")
        st = connection.state
        prefix = fresh_queue_name("cq-state") + ":"
        try:
            assert st.incr(prefix + "n") == 1
            assert st.incr(prefix + "n", 5) == 6
            st.put(prefix + "a", "1")
            st.put(prefix + "b", "2", ttl=60)
            st.put(prefix[:-1] + "-other", "no")
            assert st.scan(prefix) == {prefix + "n": "6", prefix + "a": "1", prefix + "b": "2"}
        finally:
            for key in (prefix + "n", prefix + "a", prefix + "b", prefix[:-1] + "-other"):
                st.delete(key)

    def test_state_store_only_new_is_atomic(self, broker_url: str, caps: Capabilities) -> None:
        self.require(caps, "shared_state")
        key = fresh_queue_name("cq-state")
        wins: list[bool] = []
        conns = [self.open(broker_url) for _ in range(4)]
        try:
            barrier = threading.Barrier(len(conns))

            def race(c: Connection) -> None:
                barrier.wait()
                wins.append(c.state.put(key, "me", ttl=30, only_new=True))

            threads = [threading.Thread(target=race, args=(c,)) for c in conns]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(wins) == [False, False, False, True]
        finally:
            conns[0].state.delete(key)
            for c in conns:
                c.close()
