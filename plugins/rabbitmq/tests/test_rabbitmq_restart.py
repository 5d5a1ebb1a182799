"""RabbitMQ restarts mid-run (``rabbitmqctl stop_app`` / ``start_app``): consumers reconnect and go on.

Durable queues and persistent messages survive the restart; acks of deliveries from the dead
channel are ignored (RabbitMQ redelivers those messages). The test always leaves RabbitMQ running.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from collections.abc import Iterator

import pika
import pytest

from callq.testing import fresh_queue_name
from callq.testing.restart import run_restart_scenario

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
    try:
        # held: their channel dies, so their acks are ignored and RabbitMQ redelivers them;
        # stored: a durable queue with persistent messages keeps them; fetch and publish may
        # raise while the connection is away (the runner retries the same way)
        report = run_restart_scenario(URL, restart_rabbitmq, queue=queue, ack_held=True, held_come_back=True)
    finally:
        ensure_rabbitmq_running()
    print(report)
    assert report.held_acked == 5, "acks of a dead channel must be ignored, not an error"
    assert report.lost == 0, f"{report.lost} messages never came after the restart"
    assert report.loop_error is None, report
    assert any("reconnecting" in r.getMessage() for r in caplog.records), "no warning about the lost connection"
