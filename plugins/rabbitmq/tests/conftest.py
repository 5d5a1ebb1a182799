"""Session fixture: a local 3-node RabbitMQ cluster (own node names, ports and cookie), always stopped."""

from collections.abc import Iterator

import pytest

from callq_rabbitmq.local import LocalRabbitCluster, local_rabbit_cluster


@pytest.fixture(scope="session")
def rabbit_cluster() -> Iterator[LocalRabbitCluster]:
    with local_rabbit_cluster() as cluster:
        yield cluster
