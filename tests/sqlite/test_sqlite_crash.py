"""Worker-level crash test: kill -9 real worker processes mid-run; no call may be lost."""

from pathlib import Path

import pytest

from callq.testing.crash import run_crash_test


@pytest.mark.slow
def test_worker_kill_minus_9_loses_no_call(tmp_path: Path) -> None:
    # lease=2: a killed worker's messages come back within about two seconds
    url = f"sqlite:///{tmp_path}/crash.db?lease=2"
    report = run_crash_test(url, calls=2000, kills=2, workdir=tmp_path / "work")
    print(report)
    assert report.lost == 0, report
    assert report.ran_unique == report.calls
