"""The database server restarts mid-run: the consumer reconnects and nothing is lost.

Stops the shared PostgreSQL / MariaDB for a moment and starts it again in a ``finally``,
waiting until it answers, whatever the outcome.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

from callq.broker import Connection
from callq.testing import drain, fresh_queue_name
from callq_sql.testing import ensure_running, start_server, stop_server


def restart(url: str) -> None:
    try:
        stop_server(url)
        time.sleep(0.5)  # clients notice it is gone
    finally:
        start_server(url)
        ensure_running(url)


@pytest.mark.slow
def test_consumer_survives_a_server_restart(server: str, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="callq")
    url = f"{server}?table_prefix={prefix}&lease=20"
    queue = fresh_queue_name("cq-sql-restart")
    consumer, producer = Connection(url), Connection(url)
    seen: list[bytes] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def loop() -> None:
        try:
            while not stop.is_set():
                got = consumer.fetch(queue, 20, 0.2)  # retries on its own while the server is away
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
        held = drain(consumer, queue, 5, ack=False)  # in flight at the restart
        assert len(held) == 5
        # waiting (delayed) in the table while the server restarts
        producer.publish(queue, [f"stored-{i}".encode() for i in range(50)], delay=3.0)

        stop.clear()
        thread = threading.Thread(target=loop, daemon=True)
        thread.start()  # fetching when the server goes away: it must reconnect by itself
        time.sleep(0.3)
        restart(server)
        assert consumer.ack(held) == 5  # the rows survived with their owner: the ack deletes them
        after = [f"after-{i}".encode() for i in range(300)]
        for start in range(0, len(after), 50):
            producer.publish(queue, after[start:start + 50])
        expected = set(after) | {f"stored-{i}".encode() for i in range(50)}
        deadline = time.monotonic() + 30
        while not expected <= set(seen) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert expected <= set(seen), f"{len(expected - set(seen))} messages never came after the restart"
        assert consumer.size(queue) == 0
        assert not any(b.startswith(b"kept-") for b in seen), "acked after the restart, yet redelivered"
        assert thread.is_alive() and not errors, errors
        assert any("retrying" in r.getMessage() for r in caplog.records), "no warning about the lost connection"
    finally:
        stop.set()
        thread.join(30)
        ensure_running(server)
        consumer.close()
        producer.close()


@pytest.mark.slow
def test_a_real_worker_survives_a_server_restart(server: str, prefix: str) -> None:
    """A ``@callq.task`` worker consuming while the database restarts: every call runs."""
    import callq

    url = f"{server}?table_prefix={prefix}&lease=20"
    ran: set[int] = set()
    lock = threading.Lock()

    @callq.task(fresh_queue_name("cq-sql-worker"), broker=url, concurrency=4)
    def work(i: int) -> None:
        time.sleep(0.01)  # slow enough that calls wait in the table while the server is down
        with lock:
            ran.add(i)

    try:
        work.push_many([{"i": i} for i in range(300)])
        work.consume()
        deadline = time.monotonic() + 15
        while len(ran) < 150 and time.monotonic() < deadline:
            time.sleep(0.01)
        restart(server)
        for i in range(300, 600):
            work.push(i)
        deadline = time.monotonic() + 30
        while len(ran) < 600 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ran == set(range(600)), f"{600 - len(ran)} calls never ran"
    finally:
        ensure_running(server)
        work.stop(timeout=30)
