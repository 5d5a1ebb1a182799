"""callq.testing.restart on the memory broker: the scenario passes when nothing is lost and
reports what a "restart" that loses messages lost (so the restart tests built on it can fail)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from callq.broker import Connection
from callq.testing import fresh_queue_name
from callq.testing.restart import run_restart_scenario, run_worker_restart_scenario


def _url() -> str:
    return f"memory://{fresh_queue_name('restart')}"


def _purge(url: str, queue: str) -> Callable[[], None]:
    """A "restart" of a server that loses every message it stored."""
    def restart() -> None:
        conn = Connection(url)
        conn.purge(queue)
        conn.close()
    return restart


def test_a_restart_that_keeps_everything_loses_nothing() -> None:
    url = _url()
    calls: list[int] = []
    report = run_restart_scenario(url, lambda: calls.append(1), ack_held=True, held_come_back=False,
                                  fetch_during_restart=True, timeout=5)
    assert calls == [1]
    assert (report.lost, report.held_acked, report.held_redelivered) == (0, 5, 0)
    assert (report.fetch_errors, report.publish_errors, report.loop_error, report.size_after) == (0, 0, None, 0)
    assert "lost 0" in str(report)


def test_a_restart_that_drops_the_queue_is_reported() -> None:
    url, queue = _url(), fresh_queue_name()
    report = run_restart_scenario(url, _purge(url, queue), queue=queue, timeout=1)
    # the 50 stored are gone; the 5 held are never acked nor requeued by this broker
    assert report.lost == 55
    assert report.held_acked is None


def test_a_failing_restart_propagates() -> None:
    def broken() -> None:
        raise RuntimeError("could not stop the server")

    with pytest.raises(RuntimeError, match="could not stop"):
        run_restart_scenario(_url(), broken, timeout=1)


def test_worker_scenario_counts_the_calls_that_ran() -> None:
    url = _url()
    report = run_worker_restart_scenario(url, lambda: None, calls=40, call_seconds=0.001, timeout=10)
    assert (report.calls, report.ran_unique, report.lost) == (40, 40, 0)


def test_worker_scenario_reports_lost_calls() -> None:
    url, queue = _url(), fresh_queue_name()
    report = run_worker_restart_scenario(url, _purge(url, queue), queue=queue, calls=400, concurrency=1,
                                         call_seconds=0.005, timeout=2)
    assert report.lost > 0
