"""The broker contract: what every broker plugin must do, checked against a real server.

``BrokerContract`` composes one mixin per subject; a plugin may also subclass single mixins.
"""

from __future__ import annotations

from ..poison import PoisonContract
from .acks import AbstractAckTests
from .base import ContractBase, drain, fresh_queue_name
from .concurrency import AbstractConcurrencyTests
from .delay_priority import AbstractDelayPriorityTests
from .publish_fetch import AbstractPublishFetchTests
from .state_store import AbstractStateStoreTests

__all__ = [
    "AbstractAckTests",
    "AbstractConcurrencyTests",
    "AbstractDelayPriorityTests",
    "AbstractPublishFetchTests",
    "AbstractStateStoreTests",
    "BrokerContract",
    "PoisonContract",
    "ContractBase",
    "drain",
    "fresh_queue_name",
]


class BrokerContract(
    AbstractPublishFetchTests,
    AbstractAckTests,
    AbstractDelayPriorityTests,
    AbstractConcurrencyTests,
    AbstractStateStoreTests,
    PoisonContract,
):
    """Subclass as ``Test<Broker>Contract`` and override the ``broker_url`` fixture.

    Optional overrides: ``wait_margin`` (extra seconds allowed on top of the broker's
    ``redelivery_timeout``), ``concurrency_messages``.
    """
