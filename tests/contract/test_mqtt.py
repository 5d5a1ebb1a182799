"""The broker contract on a real Mosquitto (127.0.0.1:1883): what MQTT claims (no acks, no backlog)."""

import uuid

import pytest

from callq.testing import BrokerContract


class TestMqttContract(BrokerContract):
    @pytest.fixture
    def broker_url(self) -> str:
        # a group of our own: no other test run's subscribers take our messages
        return f"mqtt://127.0.0.1:1883?qos=1&group=cqtest-{uuid.uuid4().hex[:8]}&handback=0.5"
