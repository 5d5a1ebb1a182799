"""The broker contract for Redis Streams, on its own key prefix."""

from collections.abc import Iterator

import pytest
import redis

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

    def inject_foreign_entries(self, broker_url: str, queue: str, phase: str) -> int:
        """Entries callq did not write: no field ``b``, or ``b`` among other fields; before
        anything, a string where the stream belongs."""
        prefix = broker_url.rsplit("prefix=", 1)[1]
        client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        try:
            key = f"{prefix}:s:{queue}"
            if phase == "before":
                client.set(key, '{"a": 1}')
                return 1
            for i in range(3):
                client.xadd(key, {"body": f'{{"a": {i}}}'})
            client.xadd(key, {"b": '{"a": 1}', "extra": "\xff"})
            client.xadd(key, {b"\xff": b"\x00\xfe"})
        finally:
            client.close()
        return 5
