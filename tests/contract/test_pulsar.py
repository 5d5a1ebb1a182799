"""The broker contract on Pulsar (tested on pulsar-lite, started for the run; see docs/brokers/pulsar.md)."""

from collections.abc import Iterator

import pytest

from callq.testing import BrokerContract
from callq_pulsar.testing import pulsar_url


@pytest.fixture(scope="module")
def pulsar_server() -> Iterator[str]:
    with pulsar_url() as url:
        yield url


class TestPulsarContract(BrokerContract):
    wait_margin = 5.0

    @pytest.fixture
    def broker_url(self, pulsar_server: str) -> str:
        # the test server drops a silent consumer after ~2 x 2 s keep-alive (see testing.py)
        return f"{pulsar_server}/public/default?redelivery=6&nack_delay=0.05"
