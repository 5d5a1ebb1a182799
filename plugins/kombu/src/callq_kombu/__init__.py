"""callq-kombu: any kombu transport as a callq broker (``kombu+redis://localhost:6379/0``)."""

from .broker import KombuBroker

__all__ = ["KombuBroker"]
__version__ = "0.1.0"
