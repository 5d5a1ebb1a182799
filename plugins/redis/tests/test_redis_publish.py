"""Publishing on the Redis list brokers: the LPUSH sent on a held connection (client.HeldConnection)."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator

import pytest
import redis

from callq.broker import Connection
from callq.message import decode, encode, new_meta
from callq.testing import drain, fresh_queue_name
from callq_redis.testing import REDIS, fresh_prefix


@pytest.fixture
def conn() -> Iterator[Connection]:
    with fresh_prefix() as prefix:
        c = Connection(f"{REDIS}?prefix={prefix}")
        yield c
        c.close()


@pytest.fixture
def raw() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS)
    yield client
    client.close()


def _bodies(n: int, start: int = 0) -> list[bytes]:
    return [encode({"i": i}, new_meta()) for i in range(start, start + n)]


def _numbers(conn: Connection, queue: str, n: int) -> list[int]:
    return sorted(decode(d.body)[0]["i"] for d in drain(conn, queue, n))


def test_publishes_from_many_threads_at_once_all_arrive(conn: Connection) -> None:
    queue = fresh_queue_name()
    start = threading.Barrier(8)

    def publish(t: int) -> None:
        start.wait()
        for i in range(200):
            conn.publish(queue, _bodies(1, t * 1000 + i))

    threads = [threading.Thread(target=publish, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert conn.size(queue) == 1600
    assert _numbers(conn, queue, 1600) == sorted(t * 1000 + i for t in range(8) for i in range(200))


def test_a_killed_held_connection_is_replaced_without_losing_the_publish(conn: Connection,
                                                                         raw: redis.Redis) -> None:
    queue = fresh_queue_name()
    conn.publish(queue, _bodies(1))
    held = conn.broker._held.conn
    host, port = held._sock.getsockname()[:2]
    assert raw.client_kill(f"{host}:{port}")
    conn.publish(queue, _bodies(1, 1))  # the dead socket fails; the retry reconnects
    assert conn.broker.rc.failures == 1
    conn.publish(queue, _bodies(1, 2))
    assert _numbers(conn, queue, 3) == [0, 1, 2]


def test_an_error_reply_keeps_the_connection_and_is_raised(conn: Connection, raw: redis.Redis) -> None:
    queue = fresh_queue_name()
    conn.publish(queue, _bodies(1))
    held = conn.broker._held.conn
    key = conn.broker._list_key(queue)
    raw.delete(key)
    raw.set(key, "not a list")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        conn.publish(queue, _bodies(1))
    raw.delete(key)
    conn.publish(queue, _bodies(1, 5))
    assert conn.broker._held.conn is held and held._sock is not None
    assert _numbers(conn, queue, 1) == [5]


def test_the_held_connection_goes_back_to_the_pool(conn: Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    queue = fresh_queue_name()
    held = conn.broker._held
    pool = conn.broker.client.connection_pool
    monkeypatch.setattr(held, "HOLD", 0.0)  # every publish gives it back and takes one again
    for i in range(3):
        conn.publish(queue, _bodies(1, i))
        assert len(pool._in_use_connections) == 1
    held.close()
    assert not pool._in_use_connections and held.conn is None
    conn.publish(queue, _bodies(1, 3))
    assert _numbers(conn, queue, 4) == [0, 1, 2, 3]


def _child_publishes(conn: Connection, queue: str) -> None:
    conn.publish(queue, _bodies(1, 100))


def test_a_forked_child_publishes_on_its_own_connection(conn: Connection) -> None:
    queue = fresh_queue_name()
    conn.publish(queue, _bodies(1))
    parents = conn.broker._held.conn
    child = multiprocessing.get_context("fork").Process(target=_child_publishes, args=(conn, queue))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    conn.publish(queue, _bodies(1, 1))
    assert conn.broker._held.conn is parents
    assert _numbers(conn, queue, 3) == [0, 1, 100]


def _child_publishes_on_the_held_connection(conn: Connection, queue: str) -> None:
    held = conn.broker._held
    assert held.conn is None  # the parent's socket is not the child's
    conn.publish(queue, _bodies(1, 200))
    assert held.conn is not None  # the lock the parent's publisher held at the fork is a new one


def test_a_fork_while_a_publish_holds_the_connection_leaves_the_child_a_free_one(conn: Connection) -> None:
    queue = fresh_queue_name()
    conn.publish(queue, _bodies(1))
    held = conn.broker._held
    with held.lock:  # as if another thread were publishing at the fork
        child = multiprocessing.get_context("fork").Process(
            target=_child_publishes_on_the_held_connection, args=(conn, queue))
        child.start()
        child.join(30)
    assert child.exitcode == 0
    assert _numbers(conn, queue, 2) == [0, 200]
