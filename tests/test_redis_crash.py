"""kill -9 of real worker processes twice mid-run: nothing lost (reliable, lmove, Streams)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from callq.testing.crash import run_crash_test

REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"cqtest-{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis.from_url(REDIS)
    keys = list(client.scan_iter(match=f"{name}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


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
