"""The broker contract on a real RabbitMQ (127.0.0.1:5672, guest/guest)."""

import gzip

import pika
import pytest

from callq.testing import BrokerContract

# queue_expires: every queue these tests create deletes itself 10 minutes after its last use.
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672/%2F?queue_expires=600"


class TestRabbitmqContract(BrokerContract):
    wait_margin = 5.0

    @pytest.fixture
    def broker_url(self) -> str:
        return RABBITMQ

    def inject_foreign_entries(self, broker_url: str, queue: str, phase: str) -> int:
        """Messages of other AMQP producers: gzip content-encoding, odd headers, an empty body."""
        if phase != "among":
            return 0
        conn = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2F"))
        try:
            ch = conn.channel()
            odd = [(gzip.compress(b'{"a": 1}'), pika.BasicProperties(content_encoding="gzip")),
                   (b"\x00\x01binary", pika.BasicProperties(content_type="application/octet-stream",
                                                             headers={"x": [1, {"y": None}]})),
                   ('{"a": "ü"}'.encode("utf-16"), pika.BasicProperties(content_encoding="utf-16"))]
            for body, props in odd:
                ch.basic_publish("", queue, body, props)
        finally:
            conn.close()
        return len(odd)
