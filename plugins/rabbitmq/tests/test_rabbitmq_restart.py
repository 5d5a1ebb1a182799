"""RabbitMQ restarts mid-run (``rabbitmqctl stop_app`` / ``start_app``): consumers reconnect and go on.

Durable queues and persistent messages survive the restart; acks of deliveries from the dead
channel are ignored (RabbitMQ redelivers those messages). The test always leaves RabbitMQ running.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pika
import pytest

from callq.broker import Connection
from callq.testing import drain, fresh_queue_name

URL = "amqp://guest:guest@127.0.0.1:5672/%2F?queue_expires=600&heartbeat=5"


def _amqp_answers() -> bool:
    try:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672, socket_timeout=2,
                                                                 connection_attempts=1))
    except Exception:  # noqa: BLE001
        return False
    conn.close()
    return True


def _port_closed() -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", 5672)) != 0


def ensure_rabbitmq_running() -> None:
    if _amqp_answers():
        return
    subprocess.run(["rabbitmqctl", "start_app"], check=False, timeout=120, capture_output=True)
    deadline = time.monotonic() + 60
    while not _amqp_answers():
        assert time.monotonic() < deadline, "RabbitMQ did not come back"
        time.sleep(0.2)


def restart_rabbitmq() -> None:
    try:
        subprocess.run(["rabbitmqctl", "stop_app"], check=True, timeout=120, capture_output=True)
        deadline = time.monotonic() + 30
        while not _port_closed() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # clients notice it is gone
    finally:
        subprocess.run(["rabbitmqctl", "start_app"], check=False, timeout=120, capture_output=True)
        ensure_rabbitmq_running()


@pytest.fixture
def queue() -> Iterator[str]:
    name = fresh_queue_name("cq-rmq-restart")
    yield name
    ensure_rabbitmq_running()
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
    conn.channel().queue_delete(name)
    conn.close()


def test_consumer_survives_a_rabbitmq_restart(queue: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="callq")
    consumer, producer = Connection(URL), Connection(URL)
    seen: list[bytes] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def loop() -> None:
        try:
            while not stop.is_set():
                try:
                    got = consumer.fetch(queue, 20, 0.2)
                except Exception as exc:  # noqa: BLE001 - the runner retries fetch the same way
                    logging.getLogger("callq.test").warning("fetch failed: %s", exc)
                    time.sleep(0.2)
                    continue
                if got:
                    consumer.ack(got)  # acks of a dead channel must not raise
                    seen.extend(d.body for d in got)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=loop, daemon=True)
    try:
        producer.publish(queue, [f"before-{i}".encode() for i in range(100)])
        thread.start()
        deadline = time.monotonic() + 10
        while len(seen) < 100 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(seen) == 100
        # held, unacked at the restart: must come back after it
        stop.set()
        thread.join(5)
        held = consumer.fetch(queue, 5, 0.1)
        assert held == []
        producer.publish(queue, [f"kept-{i}".encode() for i in range(5)])
        held = drain(consumer, queue, 5, ack=False)
        assert len(held) == 5
        # waiting in the queue at the restart: must survive it (durable queue, persistent messages)
        producer.publish(queue, [f"stored-{i}".encode() for i in range(50)])

        restart_rabbitmq()
        assert consumer.ack(held) == 5  # their channel died: ignored, not an error

        stop.clear()
        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        after = [f"after-{i}".encode() for i in range(300)]
        deadline = time.monotonic() + 30
        sent = 0
        while sent < len(after) and time.monotonic() < deadline:
            try:  # the producer reconnects on its own; publish waits for it
                producer.publish(queue, after[sent:sent + 50])
                sent += 50
            except Exception as exc:  # noqa: BLE001
                logging.getLogger("callq.test").warning("publish failed: %s", exc)
                time.sleep(0.2)
        assert sent == len(after)
        expected = set(after) | {f"stored-{i}".encode() for i in range(50)} | {f"kept-{i}".encode() for i in range(5)}
        deadline = time.monotonic() + 30
        while not expected <= set(seen) and time.monotonic() < deadline:
            time.sleep(0.05)
        missing = expected - set(seen)
        assert not missing, f"{len(missing)} messages never came after the restart"
        assert thread.is_alive() and not errors, errors
        assert any("reconnecting" in r.getMessage() for r in caplog.records), "no warning about the lost connection"
    finally:
        stop.set()
        thread.join(10)
        ensure_rabbitmq_running()
        consumer.close()
        producer.close()
