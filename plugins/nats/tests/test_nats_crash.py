"""kill -9 of real worker processes twice mid-run on NATS JetStream: nothing lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from callq.testing.crash import run_crash_test


@pytest.mark.slow
def test_kill_9_twice_loses_nothing(url: str, tmp_path: Path) -> None:
    report = run_crash_test(url, calls=2000, kills=2, workdir=tmp_path)
    print(f"nats: {report}")
    assert report.lost == 0, report
    assert report.ran_unique == 2000
