"""A local 3-node RabbitMQ cluster (own node names, ports and cookie) for the module that asks,
stopped after it whatever the outcome."""

from collections.abc import Iterator

import pytest

from callq_rabbitmq.local import LocalRabbitCluster, local_rabbit_cluster


@pytest.fixture(scope="module")
def rabbit_cluster() -> Iterator[LocalRabbitCluster]:
    with local_rabbit_cluster() as cluster:
        yield cluster
