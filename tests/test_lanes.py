"""A second fetch lane (callq.lanes): short calls that wait on I/O run on two threads that each
fetch and run their own batches, on Redis (acks travel with the next fetch)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis

import callq
from callq.broker import Connection
from callq.testing import fresh_queue_name
from callq_redis.testing import REDIS, fresh_prefix


@pytest.fixture
def url() -> Iterator[str]:
    prefix = fresh_prefix()
    yield f"{REDIS}?prefix={prefix}"
    client = redis.Redis.from_url(REDIS)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


class Watch:
    """Which threads ran calls, how many ran at once, how often each call ran."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.threads: set[str] = set()
        self.runs: Counter[int] = Counter()

    def call(self, n: int) -> None:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.threads.add(threading.current_thread().name)
        _half_waiting()
        with self.lock:
            self.running -= 1
            self.runs[n] += 1


def _half_waiting() -> None:
    """~100 µs of CPU, then ~100 µs of a wait that releases the GIL: a short I/O call."""
    deadline = time.thread_time() + 0.0001
    while time.thread_time() < deadline:
        pass
    time.sleep(0.00005)


def _consume(url: str, watch: Watch, n: int, concurrency: int) -> callq.Task:
    @callq.task(fresh_queue_name(), broker=url, concurrency=concurrency, results=False)
    def f(n: int) -> None:
        watch.call(n)

    f.push_many((i,) for i in range(n))
    f.consume()
    return f


def _wait_sibling(f: callq.Task, timeout: float = 30) -> None:
    """Until the consumer runs its sibling lane (now and then it runs alone: the probe)."""
    deadline = time.monotonic() + timeout
    while not f._consumer.siblings:
        assert time.monotonic() < deadline, f"no sibling lane; lanes {f._consumer._lanes}"
        time.sleep(0.002)


def _wait_done(f: callq.Task, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (f.stats().done if f.stats() else 0) < n:
        assert time.monotonic() < deadline, f"only {f.stats()} of {n} calls done"
        time.sleep(0.02)


def test_waiting_calls_get_a_sibling_lane_and_each_runs_once(url: str) -> None:
    watch = Watch()
    f = _consume(url, watch, 4000, concurrency=16)
    try:
        _wait_sibling(f)
        _wait_done(f, 4000)
        consumer = f._consumer
        assert consumer._siblings_allowed
    finally:
        f.stop(timeout=10)
    assert watch.most >= 2
    assert any(name.endswith("-dispatch") for name in watch.threads) and len(watch.threads) >= 2
    assert sorted(watch.runs) == list(range(4000)) and set(watch.runs.values()) == {1}
    conn = Connection(url)
    try:
        assert conn.size(f.options.queue) == 0
        assert consumer.in_flight == 0 and consumer.siblings == 0
    finally:
        conn.close()


def test_concurrency_one_never_runs_two_calls_at_once(url: str) -> None:
    watch = Watch()
    f = _consume(url, watch, 1500, concurrency=1)
    try:
        _wait_done(f, 1500)
        assert not f._consumer._siblings_allowed
    finally:
        f.stop(timeout=10)
    assert watch.most == 1 and set(watch.runs.values()) == {1}


def test_a_paused_queue_stops_both_lanes(url: str) -> None:
    watch = Watch()
    f = _consume(url, watch, 200_000, concurrency=16)
    try:
        _wait_sibling(f)
        f.pause()
        time.sleep(1.5)  # the pause is read every 0.5 s; a batch in hand finishes
        done = sum(watch.runs.values())
        time.sleep(1.0)
        assert sum(watch.runs.values()) == done, "a lane kept fetching while the queue was paused"
        assert f._consumer.siblings == 0
        f.resume()
        _wait_done(f, done + 1000)
    finally:
        f.stop(timeout=10)
        f.clear()


def test_graceful_stop_with_two_lanes_loses_nothing(url: str) -> None:
    watch = Watch()
    f = _consume(url, watch, 20_000, concurrency=16)
    _wait_done(f, 1000)
    _wait_sibling(f)
    f.stop(timeout=10)
    assert not f._consumer.running
    conn = Connection(url)
    try:
        left = conn.size(f.options.queue)
    finally:
        conn.close()
    assert set(watch.runs.values()) == {1}, "no call ran twice"
    assert len(watch.runs) + left == 20_000, "every call ran or is back on the queue"
    f.clear()
