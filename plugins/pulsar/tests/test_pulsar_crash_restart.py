"""kill -9 of worker processes, and a restart of the server (pulsar-lite, on its own data dir)."""

from __future__ import annotations

from pathlib import Path

import pytest

from callq.broker import Connection
from callq.testing import drain, fresh_queue_name
from callq.testing.crash import run_crash_test
from callq_pulsar.testing import free_port, pulsar_lite_server, stale_consumer_errors


@pytest.mark.slow
def test_kill_9_twice_loses_nothing(url: str, tmp_path: Path) -> None:
    before = stale_consumer_errors(url)
    report = run_crash_test(url, calls=2000, kills=2, workdir=tmp_path, timeout=45)
    print(f"pulsar: {report}")
    if report.lost and stale_consumer_errors(url) > before:
        # pulsar-lite 0.2.0 sometimes keeps the consumer of a connection that ended with a TCP
        # reset (kill -9 mid-traffic) registered, with its unacked messages, and refuses the
        # next worker's consumer of the same id: see docs/brokers/pulsar.md. Any other loss fails.
        pytest.xfail(f"pulsar-lite stale-consumer bug stranded messages: {report}")
    assert report.lost == 0, report
    assert report.ran_unique == 2000


@pytest.mark.slow
def test_messages_survive_a_server_restart(tmp_path: Path) -> None:
    """Waiting and unacked messages are on disk; a connection reconnects by itself."""
    data = tmp_path / "data"
    port = free_port()
    queue = fresh_queue_name()
    with pulsar_lite_server(data_dir=data, port=port) as server:
        url = f"{server}/public/default?operation_timeout=20"
        producer = Connection(url)
        producer.publish(queue, [f"r{i}".encode() for i in range(10)])
        holder = Connection(url)
        unacked = drain(holder, queue, 1, ack=False)
        assert len(unacked) == 1
    holder.close()  # its server is gone: closing must not hang or raise
    with pulsar_lite_server(data_dir=data, port=port):
        consumer = Connection(url)
        try:
            back = drain(consumer, queue, 10, timeout=20)
            assert sorted(d.body for d in back) == sorted(f"r{i}".encode() for i in range(10))
            producer.publish(queue, [b"after"])  # the old connection reconnected
            assert [d.body for d in drain(consumer, queue, 1, timeout=20)] == [b"after"]
        finally:
            consumer.close()
            producer.close()
