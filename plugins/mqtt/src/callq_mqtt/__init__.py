"""callq-mqtt: callq queues as MQTT topics with shared subscriptions (``mqtt://localhost:1883?group=callq``)."""

from .broker import MqttBroker

__all__ = ["MqttBroker"]
__version__ = "0.1.0"
