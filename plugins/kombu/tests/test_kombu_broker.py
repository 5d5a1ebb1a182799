"""callq-kombu specifics: per-transport claims, redis visibility timeout, kill -9 crash tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
import redis

from callq.broker import Connection
from callq.errors import BrokerError, ConfigError
from callq.testing import drain, fresh_queue_name
from callq.testing.crash import run_crash_test

AMQP = "kombu+amqp://guest:guest@127.0.0.1:5672//?queue_expires=600"


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"cqtest-kombu-{uuid.uuid4().hex[:8]}:"
    yield name
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    keys = list(client.scan_iter(match=f"{name}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def test_claims_per_transport(prefix: str) -> None:
    r = Connection(f"kombu+redis://127.0.0.1:6379/0?visibility_timeout=7&key_prefix={prefix}")
    a = Connection(AMQP)
    try:
        assert not r.capabilities.acks and not r.capabilities.persistent and r.capabilities.redelivery_timeout == 9.0
        assert a.capabilities.acks and a.capabilities.persistent
        assert not r.capabilities.native_delay and not a.capabilities.priority
    finally:
        r.close()
        a.close()


def test_bad_urls() -> None:
    with pytest.raises(ConfigError):
        Connection("kombu+amqp://guest:guest@127.0.0.1:5672//?visibility_timeout=3")
    with pytest.raises(ConfigError):
        Connection("kombu+redis://127.0.0.1:6379/0?nope=1")
    with pytest.raises(BrokerError):
        Connection("kombu+redis://127.0.0.1:1/0?connect_timeout=1")


def test_redis_unacked_messages_come_back_after_visibility_timeout(prefix: str) -> None:
    url = f"kombu+redis://127.0.0.1:6379/0?visibility_timeout=1&key_prefix={prefix}"
    queue = fresh_queue_name("cq-kombu")
    holder, other = Connection(url), Connection(url)
    try:
        holder.publish(queue, [b"v"])
        held = drain(holder, queue, 1, ack=False)
        assert len(held) == 1
        assert other.fetch(queue, 1, 0.3) == []  # invisible while fresh
        back = drain(other, queue, 1, timeout=10)  # holder never acks: it returns
        assert [d.body for d in back] == [b"v"]
    finally:
        holder.close()
        other.close()


@pytest.mark.slow
def test_kombu_amqp_kill_9_twice_loses_nothing(tmp_path: Path) -> None:
    queue = fresh_queue_name("cq-kombu-crash")
    try:
        report = run_crash_test(AMQP, calls=2000, kills=2, workdir=tmp_path, queue=queue)
    finally:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
        ch = conn.channel()
        ch.queue_delete(queue)
        ch.queue_delete(f"{queue}.dlq")
        conn.close()
    print(f"kombu+amqp: {report}")
    assert report.lost == 0, report
