"""callq-nats: callq queues on NATS JetStream (``nats://host:4222``)."""

from .broker import NatsBroker

__all__ = ["NatsBroker"]
__version__ = "0.1.0"
