"""nats-server restarts mid-run: the consumer reconnects and nothing is lost.

Stops the shared nats-server for a moment and starts it again in a ``finally`` (waiting until
it answers), whatever the outcome. Streams are file-backed: stored and unacked messages survive.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import pytest

from callq.testing import fresh_queue_name
from callq.testing.restart import run_restart_scenario, run_worker_restart_scenario
from callq_nats.testing import ensure_running, stop_server


def _restart() -> None:
    try:
        stop_server()
        time.sleep(0.5)  # clients notice it is gone
    finally:
        ensure_running()


@pytest.fixture
def restart() -> Iterator[Callable[[], None]]:
    """Restarts nats-server; it is running again after the test whatever the outcome."""
    try:
        yield _restart
    finally:
        ensure_running()


@pytest.fixture
def url(prefix: str) -> str:
    return f"nats://127.0.0.1:4222?prefix={prefix}&ack_wait=5"


@pytest.mark.slow
def test_consumer_survives_a_nats_restart(url: str, restart: Callable[[], None],
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="callq")
    # held: unacked at the restart, must come back; stored: file-backed stream keeps them;
    # fetch returns [] while the server is away, publish waits for it: no errors
    report = run_restart_scenario(url, restart, queue=fresh_queue_name("cq-nats-restart"))
    print(report)
    assert report.lost == 0, f"{report.lost} messages never came after the restart"
    assert report.loop_error is None and report.fetch_errors == 0, report
    assert report.publish_errors == 0, report
    assert any("disconnected" in r.getMessage() for r in caplog.records), "no warning about the lost connection"


@pytest.mark.slow
def test_a_real_worker_survives_a_nats_restart(url: str, restart: Callable[[], None]) -> None:
    """A ``@callq.task`` worker consuming while nats-server restarts: every call runs."""
    report = run_worker_restart_scenario(url, restart, queue=fresh_queue_name("cq-nats-worker"))
    print(report)
    assert report.lost == 0, f"{report.lost} calls never ran"
