"""Session-wide Kafka servers (Tansu and Apache Kafka 0.9), started once by callq_kafka.testing."""

from collections.abc import Iterator

import pytest

from callq_kafka.testing import Server, acquire, release


@pytest.fixture(scope="session")
def tansu() -> Iterator[Server]:
    server = acquire("tansu")
    yield server
    release("tansu")


@pytest.fixture(scope="session")
def kafka09() -> Iterator[Server]:
    server = acquire("kafka09")
    yield server
    release("kafka09")


@pytest.fixture(params=["tansu", "kafka09"])
def server(request: pytest.FixtureRequest) -> Server:
    """Each of the two servers in turn."""
    return request.getfixturevalue(request.param)
