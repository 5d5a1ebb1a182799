"""kill -9 of real worker processes twice mid-run on RabbitMQ: nothing lost."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from callq.testing import fresh_queue_name
from callq.testing.crash import run_crash_test

URL = "amqp://guest:guest@127.0.0.1:5672/%2F?queue_expires=600"


@pytest.fixture
def queue() -> Iterator[str]:
    name = fresh_queue_name("cq-rmq-crash")
    yield name
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
    ch = conn.channel()
    ch.queue_delete(name)
    ch.queue_delete(f"{name}.dlq")
    conn.close()


@pytest.mark.slow
def test_rabbitmq_kill_9_twice_loses_nothing(queue: str, tmp_path: Path) -> None:
    report = run_crash_test(URL, calls=2000, kills=2, workdir=tmp_path, queue=queue)
    print(f"rabbitmq: {report}")
    assert report.lost == 0, report
    assert report.ran_unique == 2000
