"""The database server restarts mid-run: the consumer reconnects and nothing is lost.

Stops the shared PostgreSQL / MariaDB for a moment and starts it again in a ``finally``,
waiting until it answers, whatever the outcome.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import pytest

from callq.testing import fresh_queue_name
from callq.testing.restart import run_restart_scenario, run_worker_restart_scenario
from callq_sql.testing import ensure_running, start_server, stop_server


def _restart(url: str) -> None:
    try:
        stop_server(url)
        time.sleep(0.5)  # clients notice it is gone
    finally:
        start_server(url)
        ensure_running(url)


@pytest.fixture
def restart(server: str) -> Iterator[Callable[[], None]]:
    """Restarts the database server; it is running again after the test whatever the outcome."""
    try:
        yield lambda: _restart(server)
    finally:
        ensure_running(server)


@pytest.fixture
def url(server: str, prefix: str) -> str:
    return f"{server}?table_prefix={prefix}&lease=20"


@pytest.mark.slow
def test_consumer_survives_a_server_restart(url: str, restart: Callable[[], None],
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="callq")
    # stored: delayed rows waiting in the table; held: their rows survive with their owner,
    # so the ack after the restart deletes them; fetch retries on its own (no error)
    report = run_restart_scenario(url, restart, queue=fresh_queue_name("cq-sql-restart"), stored_delay=3.0,
                                  ack_held=True, held_come_back=False, fetch_during_restart=True)
    print(report)
    assert report.held_acked == 5
    assert report.lost == 0, f"{report.lost} messages never came after the restart"
    assert report.size_after == 0
    assert report.held_redelivered == 0, "acked after the restart, yet redelivered"
    assert report.loop_error is None and report.fetch_errors == 0, report
    assert report.publish_errors == 0, report
    assert any("retrying" in r.getMessage() for r in caplog.records), "no warning about the lost connection"


@pytest.mark.slow
def test_a_real_worker_survives_a_server_restart(url: str, restart: Callable[[], None]) -> None:
    """A ``@callq.task`` worker consuming while the database restarts: every call runs."""
    report = run_worker_restart_scenario(url, restart, queue=fresh_queue_name("cq-sql-worker"))
    print(report)
    assert report.lost == 0, f"{report.lost} calls never ran"
