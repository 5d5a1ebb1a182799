"""kill -9 of real worker processes twice mid-run on PostgreSQL and MariaDB: nothing lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from callq.testing.crash import run_crash_test


@pytest.mark.slow
def test_kill_9_twice_loses_nothing(server: str, prefix: str, tmp_path: Path) -> None:
    report = run_crash_test(f"{server}?table_prefix={prefix}&lease=3", calls=2000, kills=2, workdir=tmp_path)
    print(f"{server}: {report}")
    assert report.lost == 0, report
    assert report.ran_unique == 2000
