"""callq-pulsar: a callq broker on Apache Pulsar (``pulsar://host:6650/tenant/namespace``)."""

from .broker import PulsarBroker

__all__ = ["PulsarBroker"]
__version__ = "0.1.0"
