"""The broker contract for ZeroMQ PUSH/PULL (no server): what it claims is tested, the rest skipped."""

import pytest

from callq.testing import BrokerContract
from callq_zeromq.testing import free_port


class TestZeromqContract(BrokerContract):
    @pytest.fixture
    def broker_url(self) -> str:
        return f"zmq://127.0.0.1:{free_port()}"


class TestZeromqIpcContract(BrokerContract):
    @pytest.fixture
    def broker_url(self, tmp_path_factory: pytest.TempPathFactory) -> str:
        return f"zmq://{tmp_path_factory.mktemp('zmq')}/callq.sock"
