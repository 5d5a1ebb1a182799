"""A restart of Apache Kafka 0.9 (its own server, not the shared one): messages and commits survive."""

from __future__ import annotations

import pytest

from callq.broker import Connection
from callq.testing import fresh_queue_name
from callq.testing.contract import drain
from callq_kafka.testing import start_kafka09


@pytest.mark.slow
def test_messages_and_commits_survive_a_kafka_restart() -> None:
    server = start_kafka09()
    try:
        queue = fresh_queue_name("cq-kafka-restart")
        bodies = [f"k{i}".encode() for i in range(20)]
        conn = Connection(server.url_with())
        conn.publish(queue, bodies)
        first = drain(conn, queue, 8, batch=8)
        conn.close()  # commits the 8 settled ones
        publisher = Connection(server.url_with())
        publisher.publish(queue, [b"before"])
        server.restart()
        again = Connection(server.url_with())
        try:
            publisher.publish(queue, [b"after"])  # the same connection goes on after the restart
            rest = drain(again, queue, 14, timeout=30)
            assert sorted(d.body for d in first + rest) == sorted([*bodies, b"before", b"after"])
            assert again.fetch(queue, 10, 1.0) == [], "settled messages came back: commits were lost"
        finally:
            again.close()
            publisher.close()
    finally:
        server.stop()
