"""What the Redis list brokers do beyond the shared contract: URL parameters, recovery, keys."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from callq.broker import Connection
from callq.errors import ConfigError
from callq.testing import drain, fresh_queue_name
from callq_redis.testing import REDIS, fresh_prefix


@pytest.fixture
def prefix() -> Iterator[str]:
    with fresh_prefix() as name:
        yield name


@pytest.fixture
def raw() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS)
    yield client
    client.close()


def test_unknown_parameter_and_bad_mode_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown parameter"):
        Connection(f"{REDIS}?mod=fast")
    with pytest.raises(ConfigError, match="mode"):
        Connection(f"{REDIS}?mode=fastest")
    with pytest.raises(ConfigError, match="lease"):
        Connection(f"{REDIS}?lease=0.1")
    with pytest.raises(ConfigError, match="database number"):
        Connection("redis://127.0.0.1:6379/zero")


@pytest.mark.parametrize("mode, acks, priority", [("reliable", True, True), ("lmove", True, False),
                                                  ("fast", False, True)])
def test_capabilities_and_heartbeat_follow_the_url(prefix: str, mode: str, acks: bool, priority: bool) -> None:
    conn = Connection(f"{REDIS}?mode={mode}&lease=15&prefix={prefix}")
    try:
        caps = conn.capabilities
        assert caps.acks is acks
        assert caps.priority is priority
        assert caps.native_delay and caps.distributed and not caps.persistent
        assert caps.redelivery_timeout == (15.0 if acks else 0.0)
        assert conn.heartbeat_interval == pytest.approx(3.0)
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["reliable", "lmove"])
def test_heartbeat_of_a_live_consumer_recovers_a_silent_ones_messages(prefix: str, mode: str) -> None:
    url = f"{REDIS}?mode={mode}&lease=1&prefix={prefix}"
    queue = fresh_queue_name()
    silent, live = Connection(url), Connection(url)
    try:
        live.publish(queue, [b"a", b"b", b"c"])
        taken = drain(silent, queue, 3, ack=False)
        assert len(taken) == 3
        live.fetch(queue, 1, 0.05)  # registers `live` as a consumer
        deadline = time.monotonic() + 1.0 + 2.0
        recovered = 0
        while time.monotonic() < deadline and not recovered:
            time.sleep(0.1)
            recovered = live.heartbeat()
        assert recovered == 3
        assert sorted(d.body for d in drain(live, queue, 3)) == [b"a", b"b", b"c"]
    finally:
        silent.close()
        live.close()


@pytest.mark.parametrize("mode", ["reliable", "lmove"])
def test_heartbeats_keep_a_slow_consumers_messages(prefix: str, mode: str) -> None:
    url = f"{REDIS}?mode={mode}&lease=1&prefix={prefix}"
    queue = fresh_queue_name()
    slow, other = Connection(url), Connection(url)
    try:
        slow.publish(queue, [b"long-call"])
        taken = drain(slow, queue, 1, ack=False)
        ends = time.monotonic() + 2.5  # longer than the lease
        while time.monotonic() < ends:
            slow.heartbeat()
            assert other.fetch(queue, 1, slow.heartbeat_interval) == []
        slow.ack(taken)
    finally:
        slow.close()
        other.close()


@pytest.mark.parametrize("mode", ["reliable", "lmove"])
def test_ack_and_close_leave_no_inflight_keys(prefix: str, mode: str, raw: redis.Redis) -> None:
    url = f"{REDIS}?mode={mode}&prefix={prefix}"
    queue = fresh_queue_name()
    conn = Connection(url)
    conn.publish(queue, [b"x"] * 50)
    got = drain(conn, queue, 50)
    assert len(got) == 50
    held = conn.fetch(queue, 5, 0.05)
    assert held == []
    conn.close()
    leftovers = [k for k in raw.scan_iter(match=f"{prefix}:*") if not k.endswith(b":seq")]
    assert leftovers == []


def test_priorities_and_delays_together(prefix: str) -> None:
    conn = Connection(f"{REDIS}?prefix={prefix}")
    queue = fresh_queue_name()
    try:
        conn.publish(queue, [b"d-high"], delay=0.6, priority=9)
        conn.publish(queue, [b"low"], priority=-1)
        conn.publish(queue, [b"plain"])
        conn.publish(queue, [b"high"], priority=5)
        assert conn.size(queue) == 4
        first = drain(conn, queue, 3, batch=1)
        assert [d.body for d in first] == [b"high", b"plain", b"low"]
        started = time.monotonic()
        later = drain(conn, queue, 1, timeout=5)
        assert [d.body for d in later] == [b"d-high"]
        assert time.monotonic() - started < 1.5
        assert conn.size(queue) == 0
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["reliable", "lmove", "fast"])
def test_blocking_fetch_wakes_within_a_few_milliseconds(prefix: str, mode: str) -> None:
    url = f"{REDIS}?mode={mode}&prefix={prefix}"
    queue = fresh_queue_name()
    consumer, producer = Connection(url), Connection(url)
    try:
        consumer.fetch(queue, 1, 0.01)
        sent_at: list[float] = []

        def send() -> None:
            sent_at.append(time.monotonic())
            producer.publish(queue, [b"wake"])

        timer = threading.Timer(0.3, send)
        timer.start()
        got = consumer.fetch(queue, 10, 5.0)
        woke = time.monotonic()
        timer.join()
        assert [d.body for d in got] == [b"wake"]
        assert woke - sent_at[0] < 0.1
        consumer.ack(got)
    finally:
        consumer.close()
        producer.close()


def test_fast_mode_loses_what_a_dead_consumer_popped(prefix: str) -> None:
    """Documented at-most-once: nothing comes back after the consumer closes."""
    url = f"{REDIS}?mode=fast&prefix={prefix}"
    queue = fresh_queue_name()
    a, b = Connection(url), Connection(url)
    try:
        a.publish(queue, [b"gone"])
        assert len(drain(a, queue, 1, ack=False)) == 1
        a.close()
        assert b.fetch(queue, 1, 0.5) == []
    finally:
        b.close()


def test_reliable_gives_back_orphans_of_a_lost_claim_reply(prefix: str) -> None:
    """A claim that ran in Redis but whose reply never arrived must not strand messages."""
    url = f"{REDIS}?mode=reliable&prefix={prefix}"
    queue = fresh_queue_name()
    conn = Connection(url)
    try:
        broker = conn.broker
        conn.publish(queue, [b"o1", b"o2"])
        # What a lost reply leaves behind: messages moved into our in-flight hash, unknown to us.
        b = broker._base(queue)
        broker._claim(keys=[f"{b}:q", f"{b}:levels", f"{b}:delayed", f"{b}:seq", f"{b}:consumers",
                            broker._own(queue, "inflight")],
                      args=[b, broker.consumer_id, 2, 10_000, broker.dead_after_ms, 1, 0])
        assert conn.size(queue) == 0
        broker._suspect.add(queue)  # what a transient error during a claim does
        got = drain(conn, queue, 2)
        assert sorted(d.body for d in got) == [b"o1", b"o2"]
    finally:
        conn.close()


def test_lmove_gives_back_orphans_of_a_lost_claim_reply(prefix: str, raw: redis.Redis) -> None:
    url = f"{REDIS}?mode=lmove&prefix={prefix}"
    queue = fresh_queue_name()
    conn = Connection(url)
    try:
        broker = conn.broker
        conn.publish(queue, [b"o1", b"o2"])
        b, proc = broker._base(queue), broker._own(queue, "proc")
        broker._lmove_claim(keys=[f"{b}:q", proc, f"{b}:delayed", f"{b}:seq", f"{b}:consumers"],
                            args=[b, broker.consumer_id, 2, broker.dead_after_ms])
        assert conn.size(queue) == 0
        broker._suspect.add(queue)
        got = drain(conn, queue, 2)
        assert sorted(d.body for d in got) == [b"o1", b"o2"]
        assert raw.llen(f"{prefix}:{{{queue}}}:proc:{broker.consumer_id}") == 0
    finally:
        conn.close()


def test_batched_fetch_takes_many_per_round_trip(prefix: str) -> None:
    conn = Connection(f"{REDIS}?prefix={prefix}")
    queue = fresh_queue_name()
    try:
        conn.publish(queue, [f"m{i}".encode() for i in range(3000)])
        got = conn.fetch(queue, 2500, 1.0)
        assert len(got) == 2500
        assert [d.body for d in got[:3]] == [b"m0", b"m1", b"m2"]  # FIFO
        conn.ack(got)
        conn.ack(drain(conn, queue, 500))
        assert conn.size(queue) == 0
    finally:
        conn.close()


def test_a_claim_retried_after_a_lost_reply_loses_nothing(prefix: str) -> None:
    """The claim ran in Redis but its reply was lost (a failover, a timeout): the retry must not
    overwrite what the first attempt put in the in-flight hash, and those come back."""
    conn = Connection(f"{REDIS}?mode=reliable&prefix={prefix}")
    queue = fresh_queue_name()
    broker = conn.broker
    real, lost = broker._claim, []

    def reply_lost_once(*args: object, **kwargs: object) -> object:
        res = real(*args, **kwargs)
        if not lost:
            lost.append(res)
            raise redis.exceptions.ConnectionError("reply lost")
        return res

    try:
        conn.publish(queue, [b"a", b"b", b"c", b"d"])
        broker._claim = reply_lost_once
        got = conn.fetch(queue, 2, 1.0)
        assert [d.body for d in got] == [b"c", b"d"]
        conn.ack(got)
        rest = drain(conn, queue, 2, timeout=3)
        assert sorted(d.body for d in rest) == [b"a", b"b"]
    finally:
        broker._claim = real
        conn.close()


@pytest.mark.parametrize("mode", ["reliable", "fast"])
def test_claims_carry_any_bytes_and_survive_a_flushed_script_cache(prefix: str, raw: redis.Redis, mode: str) -> None:
    """Claims come back as packed strings on a held connection: bodies with spaces, empty
    ones and every byte value come back whole, and after SCRIPT FLUSH (a restarted server)
    the script is loaded again instead of failing the fetch."""
    conn = Connection(f"{REDIS}?mode={mode}&prefix={prefix}")
    queue = fresh_queue_name()
    bodies = [b"", b"a b  c ", bytes(range(256)), "\u00e9\u4e2d".encode(), b" ", b"x" * 70_000]
    try:
        conn.publish(queue, bodies)
        got = conn.fetch(queue, 3, 1.0)
        raw.script_flush()
        got += conn.ack_fetch(got, queue, 10, 1.0)
        assert [d.body for d in got] == bodies
        conn.ack(got[3:])
        assert conn.size(queue) == 0
        if mode == "reliable":
            assert raw.hlen(f"{prefix}:{{{queue}}}:inflight:{conn.broker.consumer_id}") == 0
    finally:
        conn.close()
