"""callq-mqtt specifics on a real Mosquitto: shared subscriptions split a topic; no backlog."""

from __future__ import annotations

import time
import uuid

import pytest

from callq.broker import Connection
from callq.errors import ConfigError
from callq.testing import drain, fresh_queue_name


def url(group: str, handback: float = 0) -> str:
    return f"mqtt://127.0.0.1:1883?qos=1&group={group}&handback={handback}"


def test_two_consumers_of_one_group_split_the_topic() -> None:
    group = f"cqtest-{uuid.uuid4().hex[:8]}"
    queue = fresh_queue_name("cq-mqtt")
    a, b, producer = Connection(url(group)), Connection(url(group)), Connection(url(group))
    try:
        a.fetch(queue, 1, 0.2)
        b.fetch(queue, 1, 0.2)
        bodies = [f"m{i}".encode() for i in range(200)]
        producer.publish(queue, bodies)
        time.sleep(0.5)
        got_a = drain(a, queue, 200, timeout=2)
        got_b = drain(b, queue, 200 - len(got_a), timeout=2)
        assert sorted(d.body for d in got_a + got_b) == sorted(bodies)  # each message exactly once
        assert len(got_a) >= 50 and len(got_b) >= 50, (len(got_a), len(got_b))
    finally:
        for c in (a, b, producer):
            c.close()


def test_two_groups_each_get_every_message() -> None:
    queue = fresh_queue_name("cq-mqtt")
    one, two = Connection(url(f"cqtest-{uuid.uuid4().hex[:8]}")), Connection(url(f"cqtest-{uuid.uuid4().hex[:8]}"))
    try:
        one.fetch(queue, 1, 0.2)
        two.fetch(queue, 1, 0.2)
        one.publish(queue, [b"x", b"y"])
        assert sorted(d.body for d in drain(one, queue, 2)) == [b"x", b"y"]
        assert sorted(d.body for d in drain(two, queue, 2)) == [b"x", b"y"]
    finally:
        one.close()
        two.close()


def test_no_backlog_without_subscriber() -> None:
    group = f"cqtest-{uuid.uuid4().hex[:8]}"
    queue = fresh_queue_name("cq-mqtt")
    conn = Connection(url(group))
    try:
        assert not conn.capabilities.backlog and not conn.capabilities.acks
        conn.publish(queue, [b"lost"])  # nobody subscribed: MQTT drops it
        assert conn.fetch(queue, 1, 0.5) == []
        conn.publish(queue, [b"kept"])
        assert [d.body for d in drain(conn, queue, 1)] == [b"kept"]
        assert conn.size(queue) == 0
    finally:
        conn.close()


def test_unfetched_messages_are_handed_back_to_the_group() -> None:
    group = f"cqtest-{uuid.uuid4().hex[:8]}"
    queue = fresh_queue_name("cq-mqtt")
    idle, worker = Connection(url(group, handback=0.3)), Connection(url(group, handback=0.3))
    try:
        idle.fetch(queue, 1, 0.1)  # subscribes, then never fetches again
        worker.fetch(queue, 1, 0.1)
        bodies = [f"h{i}".encode() for i in range(100)]
        worker.publish(queue, bodies)
        got = drain(worker, queue, 100, timeout=15)
        assert sorted(d.body for d in got) == sorted(bodies)
    finally:
        idle.close()
        worker.close()


def test_bad_urls_and_topics() -> None:
    with pytest.raises(ConfigError):
        Connection("mqtt://127.0.0.1:1883?qos=2")
    with pytest.raises(ConfigError):
        Connection("mqtt://127.0.0.1:1883?group=a/b")
    conn = Connection(url("cqtest-x"))
    try:
        with pytest.raises(ConfigError):
            conn.publish("bad/#", [b"x"])
    finally:
        conn.close()
