"""The broker contract for Redis Streams, on its own key prefix."""

from collections.abc import Iterator

import pytest

from callq.testing import BrokerContract
from callq_redis.testing import fresh_prefix


@pytest.fixture(scope="class")
def redis_prefix() -> Iterator[str]:
    with fresh_prefix() as prefix:
        yield prefix


class TestRedisStreamContract(BrokerContract):
    wait_margin = 5.0

    @pytest.fixture
    def broker_url(self, redis_prefix: str) -> str:
        return f"redis+stream://127.0.0.1:6379/0?group=callq&lease=2&prefix={redis_prefix}"
