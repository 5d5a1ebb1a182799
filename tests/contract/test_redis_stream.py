"""The broker contract for Redis Streams, on its own key prefix."""

import uuid
from collections.abc import Iterator

import pytest
import redis

from callq.testing import BrokerContract

REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="class")
def redis_prefix() -> Iterator[str]:
    prefix = f"cqtest-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(REDIS)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


class TestRedisStreamContract(BrokerContract):
    wait_margin = 5.0

    @pytest.fixture
    def broker_url(self, redis_prefix: str) -> str:
        return f"redis+stream://127.0.0.1:6379/0?group=callq&lease=2&prefix={redis_prefix}"
