"""Issue 9, broker side: queue names each broker accepts, first connections that fail fast with
the cause, delays on time on Redis, foreign entries dead-lettered (see also callq.testing.poison)."""

from __future__ import annotations

import time

import pytest
import redis

import callq
from callq.broker import Connection
from callq.errors import BrokerError, ConfigError
from callq.testing import fresh_queue_name
from callq.testing.lateness import measure_delay_lateness
from callq_redis.testing import REDIS, fresh_prefix

RABBIT = "amqp://guest:guest@127.0.0.1:5672/%2F"


def _decorate(url: str, queue: str) -> None:
    callq.task(queue, broker=url)(lambda a: None)


@pytest.mark.parametrize("url", [RABBIT, "kombu+amqp://guest:guest@127.0.0.1:5672//"])
def test_amqp_queue_names(url: str) -> None:
    with pytest.raises(ConfigError, match="at most 2[35]5 bytes .this one has 303.*amq"):
        _decorate(url, "q" * 303)
    with pytest.raises(ConfigError, match="control characters"):
        _decorate(url, "bad\nname")
    with pytest.raises(ConfigError, match="amq"):
        _decorate(url, "amq.mine")
    _decorate(url, "ok-" + "é" * 100)


def test_a_newline_fails_at_once_instead_of_hanging() -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError):
        _decorate(RABBIT, "line\nbreak")
    assert time.monotonic() - started < 1


def test_mqtt_queue_names() -> None:
    for bad, rule in (("a/+/b", "wildcard"), ("a/#", "wildcard"), ("nul\x00", "NUL"), ("$SYS/x", r"\$")):
        with pytest.raises(ConfigError, match=rule):
            _decorate("mqtt://127.0.0.1:1883", bad)
    with pytest.raises(ConfigError, match="65000 bytes"):
        _decorate("mqtt://127.0.0.1:1883", "t" * 65_001)
    _decorate("mqtt://127.0.0.1:1883", "plain/topic/level")


@pytest.mark.parametrize("url", [REDIS, "redis+stream://127.0.0.1:6379/0"])
def test_redis_queue_names_are_generous(url: str) -> None:
    _decorate(url, "x" * 5000 + ":with:colons and spaces")
    with pytest.raises(ConfigError, match="10000 bytes"):
        _decorate(url, "x" * 10_001)


@pytest.mark.parametrize("url, cause", [
    ("amqp://guest:pw@127.0.0.1:1/", "connection refused"),
    ("redis://:pw@127.0.0.1:1/0", "connection refused"),
    ("redis+stream://127.0.0.1:1/0", "connection refused"),
    ("mqtt://127.0.0.1:1", "connection refused"),
    ("kombu+amqp://guest:pw@127.0.0.1:1//", "refused"),
    ("kombu+redis://127.0.0.1:1/0", "refused"),
])
def test_unreachable_at_first_connect_fails_fast_with_the_cause(url: str, cause: str) -> None:
    started = time.monotonic()
    with pytest.raises(BrokerError) as info:
        Connection(url).size("q")
    took = time.monotonic() - started
    text = str(info.value)
    assert took < 8, f"took {took:.1f}s"
    assert "cannot connect to" in text and cause in text.lower(), text
    assert not text.rstrip().endswith(":"), text
    assert "pw" not in text


def test_redis_wrong_database_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="DB index is out of range"):
        Connection("redis://127.0.0.1:6379/99")


def test_redis_lost_later_keeps_retrying_for_retry_seconds() -> None:
    """After a first success the retry window is ``retry``, not ``connect_timeout``."""
    with fresh_prefix() as prefix:
        conn = Connection(f"{REDIS}?prefix={prefix}&retry=60&connect_timeout=0.5")
        try:
            rc = conn.broker.rc  # type: ignore[attr-defined]
            assert rc.connected
            calls = {"n": 0}

            def flaky() -> int:
                calls["n"] += 1
                if calls["n"] < 4:  # ~0.05 + 0.1 + 0.2 s of failures: beyond connect_timeout's budget
                    raise redis.exceptions.ConnectionError("gone")
                return 7

            assert rc.call("test", flaky) == 7 and calls["n"] == 4
        finally:
            conn.close()


@pytest.mark.parametrize("mode", ["reliable", "lmove", "fast"])
def test_redis_delays_arrive_within_50_ms(mode: str) -> None:
    # 150 delays (p99 is the second worst). A busy shared machine can stall one run's threads
    # for tens of ms, so a second run is allowed; before the fix every run's p99 was 400-800 ms
    # (a blocked fetch ran its full second) and its median 8 ms.
    reports = []
    for _ in range(2):
        with fresh_prefix() as prefix:
            report = measure_delay_lateness(f"{REDIS}?mode={mode}&prefix={prefix}", messages=150, spread=3)
        print(report)
        assert report.received == report.messages and report.early == 0
        reports.append(report)
        if report.median_ms < 5 and report.p99_ms < 50:
            break
    best = min(reports, key=lambda r: r.p99_ms)
    assert best.median_ms < 5, best
    assert best.p99_ms < 50, best


def test_redis_stream_foreign_entries_no_fetch_loop() -> None:
    """An entry without field b is handed out as a JSON array (dead-lettered by core), once."""
    with fresh_prefix() as prefix:
        conn = Connection(f"redis+stream://127.0.0.1:6379/0?prefix={prefix}")
        raw = redis.Redis.from_url(REDIS)
        queue = fresh_queue_name()
        try:
            conn.publish(queue, [b'{"a": 1}'])
            raw.xadd(f"{prefix}:s:{queue}", {"body": '{"a":1}'})
            conn.publish(queue, [b'{"a": 2}'])
            got = conn.fetch(queue, 10, 1.0)
            assert [d.body for d in got][0::2] == [b'{"a": 1}', b'{"a": 2}']
            assert got[1].body.startswith(b'["redis stream entry ') and b'"body": "{\\"a\\":1}"' in got[1].body
            conn.ack(got)
            assert conn.size(queue) == 0 and conn.fetch(queue, 10, 0.2) == []
        finally:
            raw.close()
            conn.close()


@pytest.mark.parametrize("url", ["memory://lateness", "sqlite:///{tmp}/lateness.db", RABBIT])
def test_other_native_delays_are_on_time_too(url: str, tmp_path) -> None:
    """The figures in docs/brokers/*.md come from this measurement (generous bounds here)."""
    report = measure_delay_lateness(url.format(tmp=tmp_path), messages=60)
    print(report)
    assert report.received == report.messages and report.early == 0
    assert report.median_ms < 30 and report.p99_ms < 150, report


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0?prefix={prefix}",
                                 "redis+stream://127.0.0.1:6379/0?prefix={prefix}"])
def test_retry_backoff_through_a_worker_is_on_time(url: str) -> None:
    """callq.Retry(delay=0.2): the next attempt starts 0.2 s later, not 0.6-0.9 s (issue 9)."""
    with fresh_prefix() as prefix:
        seen: dict[int, list[float]] = {}

        def flaky(i: int) -> None:
            seen.setdefault(i, []).append(time.monotonic())
            if len(seen[i]) < 3:
                raise callq.Retry(delay=0.2)

        t = callq.task(fresh_queue_name(), broker=url.format(prefix=prefix), concurrency=4, max_retries=5)(flaky)
        t.consume()
        try:
            for i in range(12):
                t.push(i)
                time.sleep(0.13)  # new work arrives while retries wait: fetches are blocked meanwhile
            deadline = time.monotonic() + 15
            while sum(len(v) for v in seen.values()) < 36 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            t.stop(timeout=10)
        gaps = sorted((b - a) * 1000 - 200 for times in seen.values() for a, b in zip(times, times[1:]))
        assert len(gaps) == 24, seen
        median, p90 = gaps[len(gaps) // 2], gaps[int(len(gaps) * 0.9)]
        print(f"{url.split(':')[0]}: retry lateness median {median:.1f} ms, p90 {p90:.1f} ms, max {gaps[-1]:.1f} ms")
        assert median < 25 and p90 < 60, gaps  # before: median 34-62 ms, p90 ~100 ms


def test_rabbitmq_connection_refuses_bad_names_at_once() -> None:
    """Not only at decoration: publish/size with a bad name is a ConfigError, not a 60 s hang."""
    conn = Connection(RABBIT)
    try:
        for bad in ("a\nb", "q" * 303, "amq.x"):
            started = time.monotonic()
            with pytest.raises(ConfigError, match="not accepted by RabbitMQ"):
                conn.publish(bad, [b"{}"])
            with pytest.raises(ConfigError):
                conn.size(bad)
            assert time.monotonic() - started < 1
    finally:
        conn.close()
