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


def url_of(server: Server, **params: object) -> str:
    query = {"session_timeout": 3, **params}
    if server.name == "kafka09":
        query["api_version"] = "0.9"
    return f"kafka://{server.bootstrap}/?" + "&".join(f"{k}={v}" for k, v in query.items())
