"""callq-redis: callq brokers on Redis lists (``redis://host:6379/0?mode=reliable|lmove|fast``)."""

from .broker import RedisBroker

__all__ = ["RedisBroker"]
__version__ = "0.1.0"
