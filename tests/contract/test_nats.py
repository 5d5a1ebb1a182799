"""The broker contract on a real NATS JetStream (127.0.0.1:4222)."""

from collections.abc import Iterator

import pytest

from callq.testing import BrokerContract
from callq_nats.testing import NATS, fresh_prefix


@pytest.fixture(scope="module")
def nats_prefix() -> Iterator[str]:
    with fresh_prefix() as prefix:
        yield prefix


class TestNatsContract(BrokerContract):
    wait_margin = 5.0

    @pytest.fixture
    def broker_url(self, nats_prefix: str) -> str:
        return f"{NATS}?prefix={nats_prefix}&ack_wait=2"
