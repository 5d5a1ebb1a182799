"""callq-kafka: a callq broker on Kafka (``kafka://127.0.0.1:9092/``), with kafka-python."""

from .broker import KafkaBroker

__all__ = ["KafkaBroker"]
__version__ = "0.1.0"
