"""The broker contract for the three Redis list modes, each on its own key prefix."""

import uuid
from collections.abc import Iterator

import pytest
import redis

from callq.testing import BrokerContract

REDIS = "redis://127.0.0.1:6379/0"


def _delete_prefix(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(scope="class")
def redis_prefix() -> Iterator[str]:
    prefix = f"cqtest-{uuid.uuid4().hex[:10]}"
    yield prefix
    _delete_prefix(prefix)


class TestRedisReliableContract(BrokerContract):
    wait_margin = 5.0

    @pytest.fixture
    def broker_url(self, redis_prefix: str) -> str:
        return f"{REDIS}?mode=reliable&lease=2&prefix={redis_prefix}"


class TestRedisLmoveContract(BrokerContract):
    wait_margin = 5.0

    @pytest.fixture
    def broker_url(self, redis_prefix: str) -> str:
        return f"{REDIS}?mode=lmove&lease=2&prefix={redis_prefix}"


class TestRedisFastContract(BrokerContract):
    @pytest.fixture
    def broker_url(self, redis_prefix: str) -> str:
        return f"{REDIS}?mode=fast&prefix={redis_prefix}"
