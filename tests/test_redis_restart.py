"""Redis restarts mid-run: consumers of every Redis broker (list modes and Streams) log a
warning, reconnect (a Streams consumer recreates its group) and go on.

Redis here keeps nothing on disk (``--save "" --appendonly no``), so messages in Redis at the
restart are gone; the test asserts on what is published after the restart.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from callq.broker import Connection
from callq.testing import fresh_queue_name
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
    queue = fresh_queue_name()
    consumer, producer = Connection(url), Connection(url)
    seen: list[bytes] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def loop() -> None:
        try:
            while not stop.is_set():
                got = consumer.fetch(queue, 50, 0.2)
                if got:
                    consumer.ack(got)
                    seen.extend(d.body for d in got)
                consumer.heartbeat()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        producer.publish(queue, [f"before-{i}".encode() for i in range(200)])
        deadline = time.monotonic() + 10
        while len(seen) < 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(seen) == 200
        restart_redis()
        after = [f"after-{i}".encode() for i in range(500)]
        for start in range(0, 500, 50):
            producer.publish(queue, after[start:start + 50])
        deadline = time.monotonic() + 20
        while not set(after) <= set(seen) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(after) <= set(seen), f"{len(set(after) - set(seen))} published after the restart never came"
        assert thread.is_alive() and not errors, errors
        assert any("failed" in r.getMessage() and "retrying" in r.getMessage() for r in caplog.records), \
            "no warning about the lost connection"
    finally:
        stop.set()
        thread.join(10)
        ensure_redis_running()
        consumer.close()
        producer.close()
