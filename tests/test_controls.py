"""Run controls (timeouts, expiry, misfire, dedup, blackout, pause, asyncio, distributed qps),
each on memory:// and on a real broker."""

import asyncio
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

import callq
from callq.options import in_blackout
from callq_redis.testing import fresh_prefix


@pytest.fixture(params=["memory", "redis"])
def url(request, tmp_path):
    if request.param == "memory":
        yield f"memory://ctl-{uuid.uuid4().hex[:8]}"
        return
    prefix = f"cqctl-{uuid.uuid4().hex[:8]}"
    yield f"redis://127.0.0.1:6379/0?prefix={prefix}&lease=3"
    import redis

    r = redis.Redis()
    keys = list(r.scan_iter(f"{prefix}*"))
    if keys:
        r.delete(*keys)


def q():
    return f"ctl-{uuid.uuid4().hex[:8]}"


def finish(task, timeout=30):
    task.consume()
    assert task._consumer.join(timeout), "consumer did not stop"
    return task.stats()


def test_timeout_abandons_the_call_and_retries(url):
    attempts = []

    @callq.task(q(), broker=url, timeout=0.3, max_retries=1, retry_backoff=0.05, stop_when_idle=1.0)
    def slow(n):
        attempts.append(callq.current().attempt)
        for _ in range(100):  # python code: the timeout interrupts it
            time.sleep(0.02)

    slow.push(1)
    started = time.monotonic()
    stats = finish(slow)
    assert attempts == [0, 1]
    assert stats.timed_out == 2 and stats.dead == 1 and stats.done == 0
    assert time.monotonic() - started < 10
    dead = slow.connection.fetch(slow.options.dlq, 1, 3)
    assert b"TimeoutError" in dead[0].body
    slow.connection.ack(dead)


def test_calls_within_timeout_succeed(url):
    @callq.task(q(), broker=url, timeout=2.0, stop_when_idle=0.5)
    def quick(n):
        return n

    quick.push_many((i,) for i in range(20))
    stats = finish(quick)
    assert stats.done == 20 and stats.timed_out == 0


def test_expired_messages_are_dropped(url):
    ran = []

    @callq.task(q(), broker=url, expires=0.5, stop_when_idle=0.5)
    def f(n):
        ran.append(n)

    f.push(1)
    f.publish({"n": 2}, expires=30)
    time.sleep(0.8)
    f.push(3)
    stats = finish(f)
    assert sorted(ran) == [2, 3]
    assert stats.expired == 1


def test_expired_to_dead_letter_queue(url):
    @callq.task(q(), broker=url, expired_to_dlq=True, stop_when_idle=0.5)
    def f(n):
        pass

    f.publish({"n": 1}, expires=0.2)
    time.sleep(0.4)
    stats = finish(f)
    assert stats.expired == 1 and stats.dead == 1
    dead = f.connection.fetch(f.options.dlq, 1, 3)
    assert b"expired" in dead[0].body
    f.connection.ack(dead)


def test_misfire_grace_drops_late_delayed_calls(url):
    ran = []

    @callq.task(q(), broker=url, misfire_grace=0.5, stop_when_idle=0.5)
    def f(n):
        ran.append(n)

    f.publish({"n": 1}, countdown=0.2)
    f.publish({"n": 2}, eta=time.time() - 5)  # due long ago: misfired
    stats = finish(f)
    assert ran == [1]
    assert stats.expired == 1


def test_dedup_skips_arguments_that_already_succeeded(url):
    ran = []

    @callq.task(q(), broker=url, dedup=True, stop_when_idle=0.5, concurrency=1)
    def weather(city, day="today"):
        ran.append((city, day))

    weather.push("Paris")
    weather.push("Paris")
    weather.push("Oslo")
    weather.push("Paris", day="tomorrow")
    stats = finish(weather)
    assert sorted(ran) == [("Oslo", "today"), ("Paris", "today"), ("Paris", "tomorrow")]
    assert stats.skipped == 1


def test_dedup_never_filters_failed_calls(url):
    calls = []

    @callq.task(q(), broker=url, dedup=True, max_retries=0, stop_when_idle=0.5, concurrency=1)
    def flaky(x):
        calls.append(x)
        if len(calls) == 1:
            raise ValueError("first fails")

    flaky.push(1)
    finish(flaky)
    flaky.push(1)
    stats = finish(flaky)
    assert calls == [1, 1] and stats.done == 1
    flaky.push(1)
    stats = finish(flaky)
    assert calls == [1, 1] and stats.skipped == 1


def test_dedup_ttl_forgets(url):
    ran = []

    @callq.task(q(), broker=url, dedup=True, dedup_ttl=1.0, stop_when_idle=0.3, concurrency=1)
    def f(x):
        ran.append(x)

    f.push(1)
    finish(f)
    f.push(1)
    finish(f)
    assert ran == [1]
    time.sleep(1.3)
    f.push(1)
    finish(f)
    assert ran == [1, 1]


def test_pause_and_resume_from_anywhere(url):
    ran = []

    @callq.task(q(), broker=url, stop_when_idle=None)
    def f(n):
        ran.append(n)

    f.pause()
    assert f.is_paused()
    f.push_many((i,) for i in range(10))
    f.consume()
    try:
        time.sleep(2.0)
        assert ran == [] and f.size() == 10
        callq.resume(f.options.queue, broker=url)
        deadline = time.monotonic() + 10
        while len(ran) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(ran) == list(range(10))
        assert not f.is_paused()
    finally:
        f.stop()


def test_blackout_window_holds_messages_on_the_queue(url):
    import datetime as dt

    now = dt.datetime.now()
    start = (now - dt.timedelta(minutes=1)).strftime("%H:%M")
    end = (now + dt.timedelta(minutes=2)).strftime("%H:%M")
    ran = []

    @callq.task(q(), broker=url, blackout=[(start, end)])
    def f(n):
        ran.append(n)

    f.push(1)
    f.consume()
    try:
        time.sleep(1.5)
        assert ran == [] and f.size() == 1, "a message ran inside the blackout window"
    finally:
        f.stop()
    assert f.size() == 1


def test_blackout_window_arithmetic():
    import datetime as dt

    windows = (("22:00", "06:00"), ("12:00", "13:00"))
    assert in_blackout(windows, dt.datetime(2026, 1, 1, 23, 30)) == dt.datetime(2026, 1, 2, 6, 0)
    assert in_blackout(windows, dt.datetime(2026, 1, 1, 5, 59)) == dt.datetime(2026, 1, 1, 6, 0)
    assert in_blackout(windows, dt.datetime(2026, 1, 1, 12, 30)) == dt.datetime(2026, 1, 1, 13, 0)
    assert in_blackout(windows, dt.datetime(2026, 1, 1, 13, 0)) is None
    with pytest.raises(callq.ConfigError, match="is not HH:MM"):
        callq.TaskOptions(queue="x", blackout=[("25:00", "26:00")])
    with pytest.raises(callq.ConfigError, match="unknown"):
        callq.TaskOptions(queue="x", timezone="Mars/Olympus")


def test_async_functions_run_on_one_loop_many_at_once(url):
    loops = set()
    running = [0]
    peak = [0]

    @callq.task(q(), broker=url, concurrency=50, stop_when_idle=0.5)
    async def fetch(i):
        loops.add(id(asyncio.get_running_loop()))
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        await asyncio.sleep(0.5)
        running[0] -= 1
        return i

    fetch.push_many((i,) for i in range(100))
    started = time.monotonic()
    stats = finish(fetch)
    assert stats.done == 100
    assert len(loops) == 1
    assert peak[0] >= 30, peak[0]
    assert time.monotonic() - started < 8, "100 x 0.5 s calls should overlap"
    assert stats.threads <= 1


def test_async_timeout_cancels(url):
    cancelled = []

    @callq.task(q(), broker=url, timeout=0.2, max_retries=0, stop_when_idle=0.5)
    async def hang():
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    hang.push()
    stats = finish(hang)
    assert cancelled == [True] and stats.timed_out == 1 and stats.dead == 1


def test_green_modes_need_monkey_patching():
    with pytest.raises(callq.ConfigError, match="gevent"):
        @callq.task(q(), broker="memory://", mode="gevent")
        def f():
            pass

        f.consume()


def test_async_mode_needs_async_function():
    @callq.task(q(), broker="memory://", mode="asyncio")
    def f():
        pass

    with pytest.raises(callq.ConfigError, match="async def"):
        f.consume()


DISTRIBUTED_WORKER = textwrap.dedent("""
    import os, sys, time
    import callq
    url, queue, out, qps = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    @callq.task(queue, broker=url, qps=qps, distributed_qps=True, concurrency=8)
    def tick(i):
        os.write(fd, f"{time.time()}\\n".encode())

    tick.consume()
    callq.wait()
""")


def test_distributed_qps_holds_the_total_across_processes(tmp_path):
    prefix = f"cqdq-{uuid.uuid4().hex[:8]}"
    url = f"redis://127.0.0.1:6379/0?prefix={prefix}&lease=3"
    queue = q()
    out = tmp_path / "ticks.txt"
    qps = 30.0

    @callq.task(queue, broker=url)
    def tick(i):
        pass

    tick.push_many((i,) for i in range(3000))
    procs = [subprocess.Popen([sys.executable, "-c", DISTRIBUTED_WORKER, url, queue, str(out), str(qps)])
             for _ in range(3)]
    try:
        time.sleep(14)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        tick.clear()
    stamps = sorted(float(x) for x in out.read_text().split())
    # skip the warm-up while the three processes discover each other
    window = [t for t in stamps if stamps[0] + 4 <= t < stamps[0] + 12]
    rate = len(window) / 8.0
    print(f"distributed qps: target {qps}, measured {rate:.2f} over 8 s")
    assert abs(rate - qps) / qps <= 0.02 + 1.0 / (qps * 8), rate


def test_rate_and_time_to_drain_are_logged(url, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="callq.worker")

    @callq.task(q(), broker=url, qps=40, rate_log_interval=1.0, stop_when_idle=0.5)
    def f(i):
        pass

    f.push_many((i,) for i in range(120))
    finish(f)
    lines = [r.getMessage() for r in caplog.records if "calls/min" in r.getMessage()]
    assert any("waiting, about" in line and "to drain" in line for line in lines), lines
    # 40 calls/s is 2400 calls/min; the first full window must show about that
    rates = [float(line.split(": ")[1].split(" calls/min")[0]) for line in lines]
    assert any(2000 <= r <= 2800 for r in rates), rates


HOLDING_WORKER = textwrap.dedent("""
    import os, sys, time
    import callq
    url, queue, out = sys.argv[1], sys.argv[2], sys.argv[3]
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    @callq.task(queue, broker=url)
    def later(tag):
        os.write(fd, f"{tag} {time.time()}\\n".encode())

    later.consume()
    print("ready", flush=True)
    callq.wait()
""")


def test_delay_without_native_support_survives_kill_9(tmp_path):
    """Redis Streams has no native delay: the worker holds the message unacked, without a
    thread; killed with -9 while holding it, the message comes back and runs when due."""
    import signal

    with fresh_prefix() as prefix:
        url = f"redis+stream://127.0.0.1:6379/0?lease=2&prefix={prefix}"
        queue = q()
        out = tmp_path / "ran.txt"

        @callq.task(queue, broker=url)
        def later(tag):
            pass

        assert not later.connection.capabilities.native_delay
        due = time.time() + 6
        later.publish({"tag": "x"}, eta=due)
        first = subprocess.Popen([sys.executable, "-c", HOLDING_WORKER, url, queue, str(out)],
                                 stdout=subprocess.PIPE, text=True)
        assert first.stdout.readline().strip() == "ready"
        time.sleep(2.0)  # fetched and held by now
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert out.read_text() == "", "ran before it was due"
        second = subprocess.Popen([sys.executable, "-c", HOLDING_WORKER, url, queue, str(out)],
                                  stdout=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 20
            while not out.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert out.read_text(), "the held message was lost with its worker"
            tag, ran_at = out.read_text().split()
            assert tag == "x" and float(ran_at) >= due - 0.05
        finally:
            second.terminate()
            second.wait(30)
