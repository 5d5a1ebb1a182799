"""callq's shared contract suite for broker plugins (ships in the wheel; needs pytest).

In a plugin's tests::

    import pytest
    from callq.testing import BrokerContract

    class TestMyBrokerContract(BrokerContract):
        @pytest.fixture
        def broker_url(self):
            return "mybroker://localhost:1234?lease=3"

Every test that needs a capability skips only when the broker does not claim it; a
claimed capability that does not hold fails. ``BrokerContract`` is the composition of one
mixin per subject (``AbstractPublishFetchTests``, ``AbstractAckTests``,
``AbstractDelayPriorityTests``, ``AbstractConcurrencyTests``, ``AbstractStateStoreTests``),
all on the fixtures of ``ContractBase``, in ``callq.testing.contract``.
"""

from .contract import BrokerContract, drain, fresh_queue_name

__all__ = ["BrokerContract", "drain", "fresh_queue_name"]
