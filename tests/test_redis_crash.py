"""kill -9 of real worker processes twice mid-run: nothing lost (reliable, lmove, Streams)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from callq.testing.crash import run_crash_test
from callq_redis.testing import REDIS, fresh_prefix


@pytest.fixture
def prefix() -> Iterator[str]:
    with fresh_prefix() as name:
        yield name


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["reliable", "lmove", "stream"])
def test_kill_9_twice_loses_nothing(prefix: str, mode: str, tmp_path: Path) -> None:
    url = (f"redis+stream://127.0.0.1:6379/0?lease=3&prefix={prefix}" if mode == "stream"
           else f"{REDIS}?mode={mode}&lease=3&prefix={prefix}")
    report = run_crash_test(url, calls=5000, kills=2,
                            workdir=tmp_path)
    print(f"redis {mode}: {report}")
    assert report.lost == 0, report
    assert report.ran_unique == 5000
