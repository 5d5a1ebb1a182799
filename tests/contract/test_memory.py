import pytest

from callq.testing import BrokerContract


class TestMemoryContract(BrokerContract):
    @pytest.fixture
    def broker_url(self) -> str:
        return "memory://contract"
