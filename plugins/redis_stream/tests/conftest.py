"""Session fixture: the local Redis Cluster of callq_redis.local (shared with callq-redis's tests)."""

from collections.abc import Iterator

import pytest

from callq_redis.local import LocalCluster, LocalSentinelGroup, shared


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    with shared("cluster") as cluster:
        yield cluster  # type: ignore[misc]


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[LocalSentinelGroup]:
    with shared("sentinel") as group:
        yield group  # type: ignore[misc]
