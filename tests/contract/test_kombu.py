"""The broker contract through kombu's redis and amqp transports, on the real servers."""

import uuid
from collections.abc import Iterator

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


class TestKombuAmqpContract(BrokerContract):
    wait_margin = 5.0

    @pytest.fixture
    def broker_url(self) -> str:
        return "kombu+amqp://guest:guest@127.0.0.1:5672//?queue_expires=600"
