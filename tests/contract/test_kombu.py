"""The broker contract through kombu's redis and amqp transports, on the real servers."""

import gzip
import uuid
from collections.abc import Iterator

import pika
import pytest
import redis

from callq.testing import BrokerContract


@pytest.fixture(scope="class")
def key_prefix() -> Iterator[str]:
    prefix = f"cqtest-kombu-{uuid.uuid4().hex[:8]}:"
    yield prefix
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


class TestKombuRedisContract(BrokerContract):
    wait_margin = 5.0

    @pytest.fixture
    def broker_url(self, key_prefix: str) -> str:
        return f"kombu+redis://127.0.0.1:6379/0?visibility_timeout=2&key_prefix={key_prefix}"

    def inject_foreign_entries(self, broker_url: str, queue: str, phase: str) -> int:
        """List items kombu did not write: not its JSON envelope."""
        if phase != "among":
            return 0
        key_prefix = broker_url.rsplit("key_prefix=", 1)[1]
        client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        try:
            items = [b"garbage", b'{"body": "x"}', b"\xff\xfe", b"[1, 2]"]
            client.lpush(f"{key_prefix}{queue}", *items)
        finally:
            client.close()
        return len(items)


class TestKombuAmqpContract(BrokerContract):
    wait_margin = 5.0

    @pytest.fixture
    def broker_url(self) -> str:
        return "kombu+amqp://guest:guest@127.0.0.1:5672//?queue_expires=600"

    def inject_foreign_entries(self, broker_url: str, queue: str, phase: str) -> int:
        """Messages of other AMQP producers: gzip content-encoding, binary, UTF-16."""
        if phase != "among":
            return 0
        conn = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2F"))
        try:
            ch = conn.channel()
            odd = [(gzip.compress(b'{"a": 1}'), pika.BasicProperties(content_encoding="gzip")),
                   (b"\x00\x01binary", pika.BasicProperties(content_type="application/x-pickle")),
                   ('{"zz": "u"}'.encode("utf-16"), pika.BasicProperties(content_encoding="utf-16"))]
            for body, props in odd:
                ch.basic_publish("", queue, body, props)
        finally:
            conn.close()
        return len(odd)
