"""Redis restarts mid-run: consumers of every Redis broker (list modes and Streams) log a
warning, reconnect (a Streams consumer recreates its group) and go on.

Redis here keeps nothing on disk (``--save "" --appendonly no``), so messages in Redis at the
restart are gone; the test asserts on what is published after the restart.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from callq.testing.restart import run_restart_scenario
from callq_redis.testing import REDIS, fresh_prefix

START_REDIS = ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
               "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
               "--logfile", "/var/log/redis/ci.log"]


def _ping() -> bool:
    client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=1, socket_connect_timeout=1,
                         retry=Retry(NoBackoff(), 0))
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _wait_for(up: bool, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _ping() is up:
            return True
        time.sleep(0.05)
    return False


def ensure_redis_running() -> None:
    if _ping():
        return
    subprocess.run(START_REDIS, check=False, timeout=30)
    assert _wait_for(True, 30), "redis did not come back"


def restart_redis() -> None:
    try:
        subprocess.run(["redis-cli", "-p", "6379", "shutdown", "nosave"], check=False, timeout=30,
                       capture_output=True)
        assert _wait_for(False, 15), "redis did not stop"
        time.sleep(0.3)  # consumers see it gone
    finally:
        ensure_redis_running()


@pytest.fixture
def prefix() -> Iterator[str]:
    try:
        with fresh_prefix() as name:
            yield name
    finally:
        ensure_redis_running()


@pytest.mark.parametrize("mode", ["reliable", "lmove", "fast", "stream"])
def test_consumer_survives_a_redis_restart(prefix: str, mode: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="callq")
    if mode == "stream":
        url = f"redis+stream://127.0.0.1:6379/0?lease=3&prefix={prefix}"
    else:
        url = f"{REDIS}?mode={mode}&lease=3&prefix={prefix}"
    try:
        # nothing survives a restart here: assert on what comes after it, fetching through it
        report = run_restart_scenario(url, restart_redis, before=200, held=0, stored=0, after=500,
                                      fetch_during_restart=True, heartbeat=True, batch=50, timeout=20)
    finally:
        ensure_redis_running()
    print(report)
    assert report.lost == 0, f"{report.lost} published after the restart never came"
    assert report.loop_error is None and report.fetch_errors == 0, report  # fetch retries on its own
    assert report.publish_errors == 0, report
    assert any("failed" in r.getMessage() and "retrying" in r.getMessage() for r in caplog.records), \
        "no warning about the lost connection"
