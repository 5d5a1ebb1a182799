"""nats-server restarts mid-run: the consumer reconnects and nothing is lost.

Stops the shared nats-server for a moment and starts it again in a ``finally`` (waiting until
it answers), whatever the outcome. Streams are file-backed: stored and unacked messages survive.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

from callq.broker import Connection
from callq.testing import drain, fresh_queue_name
from callq_nats.testing import ensure_running, stop_server


def restart() -> None:
    try:
        stop_server()
        time.sleep(0.5)  # clients notice it is gone
    finally:
        ensure_running()


@pytest.mark.slow
def test_consumer_survives_a_nats_restart(prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="callq")
    url = f"nats://127.0.0.1:4222?prefix={prefix}&ack_wait=5"
    queue = fresh_queue_name("cq-nats-restart")
    consumer, producer = Connection(url), Connection(url)
    seen: list[bytes] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def loop() -> None:
        try:
            while not stop.is_set():
                got = consumer.fetch(queue, 20, 0.2)  # returns [] while the server is away
                if got:
                    consumer.ack(got)
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
        stop.set()
        thread.join(5)
        producer.publish(queue, [f"kept-{i}".encode() for i in range(5)])
        held = drain(consumer, queue, 5, ack=False)  # unacked at the restart: must come back
        assert len(held) == 5
        producer.publish(queue, [f"stored-{i}".encode() for i in range(50)])  # waiting at the restart

        restart()
        stop.clear()
        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        after = [f"after-{i}".encode() for i in range(300)]
        for start in range(0, len(after), 50):
            producer.publish(queue, after[start:start + 50])  # retried until the server is back
        expected = set(after) | {f"stored-{i}".encode() for i in range(50)} | {f"kept-{i}".encode() for i in range(5)}
        deadline = time.monotonic() + 30
        while not expected <= set(seen) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert expected <= set(seen), f"{len(expected - set(seen))} messages never came after the restart"
        assert thread.is_alive() and not errors, errors
        assert any("disconnected" in r.getMessage() for r in caplog.records), "no warning about the lost connection"
    finally:
        stop.set()
        thread.join(30)
        ensure_running()
        consumer.close()
        producer.close()


@pytest.mark.slow
def test_a_real_worker_survives_a_nats_restart(prefix: str) -> None:
    """A ``@callq.task`` worker consuming while nats-server restarts: every call runs."""
    import callq

    url = f"nats://127.0.0.1:4222?prefix={prefix}&ack_wait=5"
    ran: set[int] = set()
    lock = threading.Lock()

    @callq.task(fresh_queue_name("cq-nats-worker"), broker=url, concurrency=4)
    def work(i: int) -> None:
        time.sleep(0.01)  # slow enough that calls wait in the stream while the server is down
        with lock:
            ran.add(i)

    try:
        work.push_many([{"i": i} for i in range(300)])
        work.consume()
        deadline = time.monotonic() + 15
        while len(ran) < 150 and time.monotonic() < deadline:
            time.sleep(0.01)
        restart()
        work.push_many([{"i": i} for i in range(300, 600)])
        deadline = time.monotonic() + 30
        while len(ran) < 600 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ran == set(range(600)), f"{600 - len(ran)} calls never ran"
    finally:
        ensure_running()
        work.stop(timeout=30)
