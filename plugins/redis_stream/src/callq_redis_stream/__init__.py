"""callq-redis-stream: a callq broker on Redis Streams (``redis+stream://host:6379/0?group=callq``)."""

from .broker import RedisStreamBroker

__all__ = ["RedisStreamBroker"]
__version__ = "0.1.0"
