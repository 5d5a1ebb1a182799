"""Session fixtures: a local Redis Cluster and a Sentinel group, started once, always stopped."""

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
