"""The broker contract for the three Redis list modes, each on its own key prefix."""

from collections.abc import Iterator

import pytest
import redis

from callq.testing import BrokerContract
from callq_redis.testing import REDIS, fresh_prefix


@pytest.fixture(scope="class")
def redis_prefix() -> Iterator[str]:
    with fresh_prefix() as prefix:
        yield prefix


class ForeignKeys:
    """Keys of the wrong type where callq keeps a queue's list or zsets (written by other code)."""

    def inject_foreign_entries(self, broker_url: str, queue: str, phase: str) -> int:
        if phase != "before":
            return 0  # a list holds only bytes: the mix covers every body
        prefix = broker_url.rsplit("prefix=", 1)[1]
        client = redis.Redis.from_url(REDIS)
        try:
            base = f"{prefix}:{{{queue}}}"
            client.set(f"{base}:q", '{"a": 1}')
            client.hset(f"{base}:delayed", mapping={"x": "1", "y": b"\xff"})
            client.sadd(f"{base}:levels", "junk")
        finally:
            client.close()
        return 3


class TestRedisReliableContract(ForeignKeys, BrokerContract):
    wait_margin = 5.0

    @pytest.fixture
    def broker_url(self, redis_prefix: str) -> str:
        return f"{REDIS}?mode=reliable&lease=2&prefix={redis_prefix}"


class TestRedisLmoveContract(ForeignKeys, BrokerContract):
    wait_margin = 5.0

    @pytest.fixture
    def broker_url(self, redis_prefix: str) -> str:
        return f"{REDIS}?mode=lmove&lease=2&prefix={redis_prefix}"


class TestRedisFastContract(ForeignKeys, BrokerContract):
    @pytest.fixture
    def broker_url(self, redis_prefix: str) -> str:
        return f"{REDIS}?mode=fast&prefix={redis_prefix}"
