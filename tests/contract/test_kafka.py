"""The broker contract on Tansu (Kafka protocol, in-memory) and on Apache Kafka 0.9.0.1.

Both servers are installed and started by callq_kafka.testing (once per test session).
"""

from collections.abc import Iterator

import pytest

from callq.testing import BrokerContract
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


class _KafkaContract(BrokerContract):
    wait_margin = 8.0
    concurrency_messages = 1000

    def cleanup(self, broker_url: str, queue: str) -> None:
        """Nothing to clean: every test has its own topic on a throwaway server."""


class TestTansuContract(_KafkaContract):
    @pytest.fixture
    def broker_url(self, tansu: Server) -> str:
        return f"kafka://{tansu.bootstrap}/?session_timeout=3"


class TestKafka09Contract(_KafkaContract):
    @pytest.fixture
    def broker_url(self, kafka09: Server) -> str:
        return f"kafka://{kafka09.bootstrap}/?api_version=0.9&session_timeout=3"


class TestTansuConfluentContract(_KafkaContract):
    """``client=confluent``: publishing and requeueing through confluent-kafka (librdkafka)."""

    @pytest.fixture
    def broker_url(self, tansu: Server) -> str:
        return f"kafka://{tansu.bootstrap}/?session_timeout=3&client=confluent"
