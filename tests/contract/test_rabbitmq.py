"""The broker contract on a real RabbitMQ (127.0.0.1:5672, guest/guest)."""

import pytest

from callq.testing import BrokerContract

# queue_expires: every queue these tests create deletes itself 10 minutes after its last use.
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672/%2F?queue_expires=600"


class TestRabbitmqContract(BrokerContract):
    wait_margin = 5.0

    @pytest.fixture
    def broker_url(self) -> str:
        return RABBITMQ
