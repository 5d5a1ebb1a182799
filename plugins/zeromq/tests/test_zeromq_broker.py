"""What is specific to callq-zeromq: endpoints, who binds, what a missing consumer means."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from callq.broker import Connection
from callq.errors import BrokerError, ConfigError
from callq.testing import drain
from callq_zeromq.testing import free_port


@pytest.mark.parametrize(("url", "needle"), [
    ("zmq://127.0.0.1", "needs a port"),
    ("zmq://", "expected zmq://host:port"),
    ("zmq://127.0.0.1:5555/x", "no path"),
    ("zmq://127.0.0.1:5555?hwm=0", "hwm"),
    ("zmq://127.0.0.1:5555?ack=1", "unknown parameter"),
])
def test_bad_urls_are_config_errors(url: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        Connection(url)


def test_only_one_consumer_can_bind_an_endpoint() -> None:
    url = f"zmq://127.0.0.1:{free_port()}"
    first, second = Connection(url), Connection(url)
    try:
        assert first.fetch("q", 1, 0.05) == []
        with pytest.raises(BrokerError, match="cannot bind"):
            second.fetch("q", 1, 0.05)
    finally:
        first.close()
        second.close()


def test_producer_started_before_the_consumer_delivers_once_it_binds() -> None:
    url = f"zmq://127.0.0.1:{free_port()}"
    producer = Connection(url)
    consumer = Connection(url)
    try:
        producer.publish("q", [b"early-1", b"early-2"])  # held by the producer's socket (up to hwm)
        got = drain(consumer, "q", 2, timeout=5)  # the first fetch binds; ZeroMQ reconnects and sends
        assert [d.body for d in got] == [b"early-1", b"early-2"]
    finally:
        producer.close()
        consumer.close()


def test_a_restarted_consumer_gets_what_is_published_after_it_is_back() -> None:
    url = f"zmq://127.0.0.1:{free_port()}"
    producer = Connection(url)
    consumer = Connection(url)
    try:
        producer.publish("q", [b"one"])
        assert [d.body for d in drain(consumer, "q", 1, timeout=5)] == [b"one"]
        consumer.close()  # the worker goes away; the producer's socket reconnects by itself
        consumer = Connection(url)
        assert consumer.fetch("q", 1, 0.2) == []
        producer.publish("q", [b"two"])
        assert [d.body for d in drain(consumer, "q", 1, timeout=5)] == [b"two"]
    finally:
        producer.close()
        consumer.close()


_CONSUMER = r"""
import sys, time
from callq.broker import Connection
conn = Connection(sys.argv[1])
conn.fetch("q", 1, 0.01)
print("bound", flush=True)
time.sleep(600)
"""


def test_messages_received_by_a_killed_consumer_are_lost() -> None:
    """The documented at-most-once behaviour: no acks, so nothing comes back after a kill -9."""
    url = f"zmq://127.0.0.1:{free_port()}"
    child = subprocess.Popen([sys.executable, "-c", _CONSUMER, url], stdout=subprocess.PIPE, text=True)
    producer = Connection(url)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "bound"
        producer.publish("q", [f"m{i}".encode() for i in range(50)])
        time.sleep(0.5)  # they reach the child's buffer
    finally:
        child.kill()
        child.wait()
    consumer = Connection(url)
    try:
        assert consumer.fetch("q", 100, 1.0) == []
    finally:
        consumer.close()
        producer.close()


def test_publish_without_a_consumer_fails_clearly_past_the_high_water_mark() -> None:
    conn = Connection(f"zmq://127.0.0.1:{free_port()}?hwm=10&send_timeout=0.2&linger=0")
    try:
        with pytest.raises(BrokerError, match="found no consumer"):
            conn.publish("q", [b"x"] * 100)
    finally:
        conn.close()
