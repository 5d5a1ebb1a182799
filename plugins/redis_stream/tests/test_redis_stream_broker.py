"""What the Redis Streams broker does beyond the shared contract."""

from __future__ import annotations

import logging
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


def url(prefix: str, extra: str = "") -> str:
    return f"redis+stream://127.0.0.1:6379/0?prefix={prefix}&lease=1{extra}"


def test_url_parameters_are_checked() -> None:
    with pytest.raises(ConfigError, match="unknown parameter"):
        Connection("redis+stream://127.0.0.1:6379/0?mode=fast")
    with pytest.raises(ConfigError, match="maxlen"):
        Connection("redis+stream://127.0.0.1:6379/0?maxlen=-1")


def test_acked_entries_are_deleted_from_the_stream(prefix: str, raw: redis.Redis) -> None:
    conn = Connection(url(prefix))
    queue = fresh_queue_name()
    try:
        conn.publish(queue, [f"m{i}".encode() for i in range(300)])
        assert raw.xlen(f"{prefix}:s:{queue}") == 300
        held = conn.fetch(queue, 100, 1.0)
        assert len(held) == 100
        assert conn.size(queue) == 200  # waiting only: the 100 in flight are not counted
        conn.ack(drain(conn, queue, 200))
        assert raw.xlen(f"{prefix}:s:{queue}") == 100  # only the unacked ones remain
        conn.ack(held)
        assert raw.xlen(f"{prefix}:s:{queue}") == 0
        assert conn.size(queue) == 0
    finally:
        conn.close()


def test_purge_keeps_entries_in_flight(prefix: str) -> None:
    conn, other = Connection(url(prefix)), Connection(url(prefix))
    queue = fresh_queue_name()
    try:
        conn.publish(queue, [b"a", b"b", b"c", b"d"])
        held = conn.fetch(queue, 2, 1.0)
        assert len(held) == 2
        assert conn.purge(queue) == 2
        assert other.fetch(queue, 10, 0.2) == []
        conn.requeue(held)
        assert sorted(d.body for d in drain(other, queue, 2)) == sorted(d.body for d in held)
    finally:
        conn.close()
        other.close()


def test_heartbeat_recovers_a_silent_consumers_entries_and_keeps_its_own(prefix: str) -> None:
    silent, live = Connection(url(prefix)), Connection(url(prefix))
    queue = fresh_queue_name()
    try:
        live.publish(queue, [b"s1", b"s2", b"mine"])
        taken = silent.fetch(queue, 2, 1.0)
        assert [d.body for d in taken] == [b"s1", b"s2"]
        mine = live.fetch(queue, 1, 1.0)
        assert [d.body for d in mine] == [b"mine"]
        recovered = 0
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and not recovered:
            time.sleep(live.heartbeat_interval)
            recovered = live.heartbeat()
        assert recovered == 2  # the live consumer's own entry was renewed, not re-added
        assert sorted(d.body for d in drain(live, queue, 2)) == [b"s1", b"s2"]
        live.ack(mine)
        assert live.fetch(queue, 5, 0.3) == []
    finally:
        silent.close()
        live.close()


def test_stream_and_group_come_back_after_they_vanish(prefix: str, raw: redis.Redis) -> None:
    """What a Redis restart without persistence looks like to a consumer: no stream, no group."""
    conn = Connection(url(prefix))
    queue = fresh_queue_name()
    try:
        conn.publish(queue, [b"one"])
        conn.ack(drain(conn, queue, 1))
        raw.delete(f"{prefix}:s:{queue}")
        conn.publish(queue, [b"two"])  # the stream exists again, the group does not
        assert [d.body for d in drain(conn, queue, 1)] == [b"two"]
    finally:
        conn.close()


def test_maxlen_warns_and_caps_the_stream(prefix: str, raw: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="callq.redis_stream")
    conn = Connection(url(prefix, "&maxlen=100"))
    queue = fresh_queue_name()
    try:
        assert any("can be dropped" in r.getMessage() for r in caplog.records)
        assert conn.capabilities.exact_size is False
        for i in range(20):
            conn.publish(queue, [f"m{i}-{j}".encode() for j in range(50)])
        assert raw.xlen(f"{prefix}:s:{queue}") < 1000
    finally:
        conn.close()


def test_lost_read_reply_orphans_are_given_back(prefix: str) -> None:
    conn = Connection(url(prefix))
    queue = fresh_queue_name()
    try:
        broker = conn.broker
        assert conn.fetch(queue, 1, 0.01) == []  # creates the group
        conn.publish(queue, [b"o1", b"o2"])
        broker.client.xreadgroup(broker.group, broker.consumer_id, {broker._key(queue): ">"}, count=2)
        assert conn.size(queue) == 0
        broker._suspect.add(queue)
        got = drain(conn, queue, 2)
        assert sorted(d.body for d in got) == [b"o1", b"o2"]
    finally:
        conn.close()


def _pending(raw: redis.Redis, prefix: str, queue: str, consumer: str) -> int:
    return len(raw.xpending_range(f"{prefix}:s:{queue}", "callq", min="-", max="+", count=1000,
                                  consumername=consumer))


def test_acks_and_the_next_read_go_in_one_round_trip(prefix: str, raw: redis.Redis) -> None:
    """``Connection.ack_fetch``: XACK + XDEL + XREADGROUP in one script, nothing held twice."""
    conn = Connection(url(prefix))
    queue = fresh_queue_name()
    consumer = conn.broker.consumer_id
    try:
        conn.publish(queue, [f"m{i:02}".encode() for i in range(25)])
        first = conn.fetch(queue, 10, 1.0)
        assert [d.body for d in first] == [f"m{i:02}".encode() for i in range(10)]
        assert conn.acks_with_fetch
        # every command of the broker goes through its client or its held connection
        spied = [conn.broker.client, *conn.broker._ack_read.held]
        sent: list[object] = []
        for obj in spied:
            name = "execute_command" if obj is spied[0] else "try_execute"
            real = getattr(obj, name)
            if obj is spied[0]:
                setattr(obj, name, lambda *a, real=real, **kw: (sent.append(a[0]), real(*a, **kw))[1])
            else:
                setattr(obj, name, lambda args, real=real: (sent.append(args[0]), real(args))[1])
        try:
            second = conn.ack_fetch(first[:4], queue, 4, 1.0)
        finally:
            del spied[0].execute_command
            for held in spied[1:]:
                del held.try_execute
        assert sent == ["EVALSHA"], f"one script call acks and reads, sent {sent}"
        assert [d.body for d in second] == [f"m{i:02}".encode() for i in range(10, 14)]
        assert _pending(raw, prefix, queue, consumer) == 10  # 6 + 4: the acked ones are gone
        assert conn.size(queue) == 11
        conn.ack_fetch(first[4:] + second, queue, 0, 0.1)  # max_n 0: acks only
        assert _pending(raw, prefix, queue, consumer) == 0 and conn.size(queue) == 11
        assert sorted(d.body for d in drain(conn, queue, 11)) == [f"m{i:02}".encode() for i in range(14, 25)]
    finally:
        conn.close()


def test_results_live_in_the_redis_result_store(prefix: str, raw: redis.Redis) -> None:
    import callq
    from callq.results.store import open_store, store_url_for
    from callq_redis.results import RedisResultStore

    @callq.task(fresh_queue_name(), broker=url(prefix), stop_when_idle=0.5)
    def double(n: int) -> int:
        return n * 2

    store_url = store_url_for(double.options)
    assert store_url is not None and isinstance(open_store(store_url), RedisResultStore)
    handles = [double.push(i) for i in range(50)]
    double.consume()
    assert [h.result(timeout=20) for h in handles] == [i * 2 for i in range(50)]
    assert raw.exists(f"{prefix}:result:{handles[0]}")  # one string per result, with its TTL
    assert 0 < raw.pttl(f"{prefix}:result:{handles[0]}") <= 3600 * 1000
    assert double._consumer.join(30)
