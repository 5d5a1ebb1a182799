"""One throwaway Pulsar-protocol server (pulsar-lite, or CALLQ_PULSAR_URL) for the plugin's tests."""

from collections.abc import Iterator

import pytest

from callq_pulsar.testing import pulsar_url


@pytest.fixture(scope="session")
def pulsar_server() -> Iterator[str]:
    with pulsar_url() as url:
        yield url


@pytest.fixture
def url(pulsar_server: str) -> str:
    return f"{pulsar_server}/public/default?redelivery=6&nack_delay=0.05"
