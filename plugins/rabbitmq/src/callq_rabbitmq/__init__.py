"""callq-rabbitmq: a callq broker on RabbitMQ (``amqp://guest:guest@localhost:5672/%2F``)."""

from .broker import RabbitmqBroker

__all__ = ["RabbitmqBroker"]
__version__ = "0.1.0"
