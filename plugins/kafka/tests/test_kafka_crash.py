"""kill -9 of real worker processes twice mid-run, on Tansu and on Apache Kafka 0.9: nothing lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from callq.testing.crash import run_crash_test
from callq_kafka.testing import Server


@pytest.mark.slow
def test_kafka_kill_9_twice_loses_nothing(server: Server, tmp_path: Path) -> None:
    report = run_crash_test(server.url_with(), calls=2000, kills=2, workdir=tmp_path, timeout=120)
    print(f"kafka ({server.name}): {report}")
    assert report.lost == 0, report
    assert report.ran_unique == 2000
