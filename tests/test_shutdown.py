"""Shutdown in real processes, on memory, sqlite and Redis, counting runs per call.

First signal: running calls finish and are acked, fetched-but-unstarted messages go back,
exit 0. Second signal: exit within about a second; every unfinished message (running calls
included) goes back to the queue, so nothing is lost and a call runs at most once more.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from callq_redis.testing import fresh_prefix

WORKER = textwrap.dedent("""
    import atexit, os, sys, time
    import callq

    url, queue, log_path, sleep, publish = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])

    def note(line):
        with open(log_path, "a") as f:
            f.write(line + "\\n")

    @callq.task(queue, broker=url, concurrency=4, prefetch_buffer=2, max_retries=0, stop_when_idle=1.0)
    def work(i):
        note(f"start {i}")
        time.sleep(sleep)
        note(f"done {i}")

    if publish:
        work.push_many((i,) for i in range(publish))
    atexit.register(lambda: print("left", work.size(), flush=True))
    work.consume()
    print("ready", flush=True)
    callq.wait()
""")


def _url(kind: str, tmp_path: Path) -> str:
    if kind == "memory":
        return f"memory://sd-{uuid.uuid4().hex[:8]}"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/q.db?lease=30"
    return f"redis://127.0.0.1:6379/0?prefix={fresh_prefix('sd')}&lease=30"


def _start(tmp_path: Path, url: str, queue: str, log: Path, sleep: float, publish: int) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = subprocess.Popen([sys.executable, str(script), url, queue, str(log), str(sleep), str(publish)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == "ready", f"worker did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
    return proc


def _events(log: Path) -> Counter:
    if not log.exists():
        return Counter()
    return Counter(tuple(line.split()) for line in log.read_text().splitlines())


def _wait_started(log: Path, n: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while sum(1 for (what, _) in _events(log) if what == "start") < n:
        assert time.monotonic() < deadline, "calls did not start"
        time.sleep(0.02)


def _publish(url: str, queue: str, n: int) -> None:
    import callq

    callq.task(queue, broker=url)(lambda i: None).push_many((i,) for i in range(n))


def _drain(tmp_path: Path, url: str, queue: str, log: Path) -> None:
    """A fresh worker with instant calls runs whatever was handed back."""
    proc = _start(tmp_path, url, queue, log, 0.0, 0)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


KINDS = ["memory", "sqlite", "redis"]


def _four_running(tmp_path: Path, kind: str, call_seconds: float) -> tuple[str, str, Path, int, subprocess.Popen]:
    """A worker with 20 calls queued and 4 of them running (concurrency 4)."""
    url, queue, log = _url(kind, tmp_path), f"sd-{uuid.uuid4().hex[:8]}", tmp_path / "ran.log"
    n = 20
    if kind != "memory":
        _publish(url, queue, n)
    proc = _start(tmp_path, url, queue, log, call_seconds, n if kind == "memory" else 0)
    _wait_started(log, 4)
    return url, queue, log, n, proc


@pytest.mark.parametrize("kind", KINDS)
def test_first_signal_finishes_running_calls_and_hands_back_the_rest(tmp_path, kind):
    url, queue, log, n, proc = _four_running(tmp_path, kind, call_seconds=1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    events = _events(log)
    started = {i for (what, i) in events if what == "start"}
    done = {i for (what, i) in events if what == "done"}
    assert started == done and len(done) == 4, events  # running calls finished, nothing else started
    assert f"left {n - 4}" in out, out  # fetched-but-unstarted went back
    if kind != "memory":
        _drain(tmp_path, url, queue, log)
        runs = Counter({i: k for (what, i), k in _events(log).items() if what == "done"})
        assert sorted(map(int, runs)) == list(range(n)) and set(runs.values()) == {1}


@pytest.mark.parametrize("kind", KINDS)
def test_second_signal_exits_at_once_and_hands_back_everything(tmp_path, kind):
    url, queue, log, n, proc = _four_running(tmp_path, kind, call_seconds=10.0)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    took = time.monotonic() - signalled
    assert took < 2.5, f"took {took:.1f}s to exit after the second signal"
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert not any(what == "done" for (what, _) in _events(log))
    assert f"left {n}" in out, (out, err)  # the 4 running calls went back too
    if kind != "memory":
        _drain(tmp_path, url, queue, log)
        events = _events(log)
        done = Counter({i: k for (what, i), k in events.items() if what == "done"})
        assert sorted(map(int, done)) == list(range(n)) and set(done.values()) == {1}
        starts = Counter({i: k for (what, i), k in events.items() if what == "start"})
        assert max(starts.values()) <= 2 and sum(starts.values()) == n + 4


def test_a_crashed_consumer_makes_the_process_exit_non_zero(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(textwrap.dedent("""
        import callq, callq.consumer

        @callq.task("crash", broker="memory://crash")
        def f():
            pass

        def boom(self, *a):
            raise RuntimeError("dispatcher bug")

        callq.consumer.Consumer._capacity = boom
        f.consume()
        callq.wait()
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode != 0
    assert "ConsumerCrashed" in proc.stderr and "dispatcher bug" in proc.stderr


def test_a_child_whose_consumer_crashed_is_replaced(tmp_path):
    script = tmp_path / "crash_child.py"
    script.write_text(textwrap.dedent(f"""
        import pathlib
        import callq, callq.consumer

        marker = pathlib.Path({str(tmp_path / 'crashed')!r})
        ran = pathlib.Path({str(tmp_path / 'ran')!r})
        capacity = callq.consumer.Consumer._capacity

        def crash_once(self):
            if not marker.exists():
                marker.write_text("x")
                raise RuntimeError("dispatcher bug")
            return capacity(self)

        callq.consumer.Consumer._capacity = crash_once

        @callq.task("crash-child", broker="sqlite:///{tmp_path}/q.db", stop_when_idle=1.0)
        def f(i):
            with ran.open("a") as out:
                out.write(f"{{i}}\\n")

        f.push_many((i,) for i in range(20))
        group = f.consume(processes=1, start_method="fork")
        callq.wait()
        print("restarts", group.restarts, flush=True)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "restarts 1" in proc.stdout, (proc.stdout, proc.stderr)
    assert "its consumer crashed" in proc.stderr and "dispatcher bug" in proc.stderr
    assert sorted(map(int, (tmp_path / "ran").read_text().split())) == list(range(20))
