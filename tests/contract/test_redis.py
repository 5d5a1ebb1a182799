"""The broker contract for the three Redis list modes, each on its own key prefix."""

from collections.abc import Iterator

import pytest

from callq.testing import BrokerContract
from callq_redis.testing import REDIS, fresh_prefix


@pytest.fixture(scope="class")
def redis_prefix() -> Iterator[str]:
    with fresh_prefix() as prefix:
        yield prefix


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
