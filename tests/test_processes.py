"""Process mode on real processes and a real sqlite file: fork and spawn, kill -9, SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import callq
from callq.processes import resolve_start_method

# A worker script run as `python script.py URL OUT MODE ...`: the task lives in __main__, so
# under spawn the children must find it again in the main script.
SCRIPT = textwrap.dedent("""
    import logging, os, sys, time
    import callq

    logging.basicConfig(level=logging.INFO, format="%(process)d %(name)s %(message)s")
    URL, OUT, METHOD = sys.argv[1], sys.argv[2], sys.argv[3]
    N, SLEEP, PROCS, IDLE = int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])

    @callq.task("procs", broker=URL, concurrency=2, max_retries=0,
                stop_when_idle=IDLE if IDLE > 0 else None, shutdown_timeout=20)
    def work(i):
        if i < 0:
            time.sleep(30)  # a blocking call the soft timeout cannot interrupt
        time.sleep(SLEEP)
        fd = os.open(OUT, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.write(fd, f"{i} {os.getpid()}\\n".encode())
        os.close(fd)

    if __name__ == "__main__":
        if N:
            work.push_many((i,) for i in range(N))
        hard = float(os.environ.get("HARD_TIMEOUT", "0")) or None
        if hard:
            work.push(-1)
        group = work.consume(processes=PROCS, start_method=METHOD, hard_timeout=hard)
        print("ready", flush=True)
        callq.wait()
        print(f"bye restarts={group.restarts} hard_kills={group.hard_kills} alive={group.alive}", flush=True)
""")


def _ran(out: Path) -> list[tuple[int, int]]:
    if not out.exists():
        return []
    return [(int(a), int(b)) for a, b in (line.split() for line in out.read_text().splitlines() if line)]


def _start(tmp_path: Path, url: str, out: Path, method: str, n: int, sleep: float, procs: int,
           idle: float = 0.0, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    script = tmp_path / "worker_script.py"
    script.write_text(SCRIPT)
    import os

    proc = subprocess.Popen([sys.executable, str(script), url, str(out), method, str(n), str(sleep), str(procs),
                             str(idle)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise AssertionError(f"worker did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return proc


def _wait_for(predicate, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _children(proc: subprocess.Popen[str]) -> list[psutil.Process]:
    """The worker processes (not multiprocessing's resource tracker)."""
    out = []
    for c in psutil.Process(proc.pid).children():
        try:
            if c.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(c.cmdline()):
                out.append(c)
        except psutil.Error:  # exited meanwhile
            pass
    return out


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_processes_run_every_call_across_pids(tmp_path, method):
    url = f"sqlite:///{tmp_path}/q.db?lease=2"
    out = tmp_path / "ran.txt"
    proc = _start(tmp_path, url, out, method, n=60, sleep=0.08, procs=3, idle=1.0)
    stdout, stderr = proc.communicate(timeout=60)  # stop_when_idle: every child ends, then the parent
    assert proc.returncode == 0, stderr
    assert "bye restarts=0" in stdout
    ran = _ran(out)
    assert sorted(i for i, _ in ran) == list(range(60))
    assert len({pid for _, pid in ran}) >= 2, ran
    assert proc.pid not in {pid for _, pid in ran}, "calls must run in the children, not the parent"
    assert f"({method})" in stderr


def test_kill_9_child_is_restarted_and_nothing_lost(tmp_path):
    url = f"sqlite:///{tmp_path}/q.db?lease=2"
    out = tmp_path / "ran.txt"
    proc = _start(tmp_path, url, out, "fork", n=80, sleep=0.05, procs=2)
    try:
        _wait_for(lambda: len(_ran(out)) >= 10, 30, "the first calls")
        victim = _children(proc)[0]
        victim.kill()  # SIGKILL
        _wait_for(lambda: len(_children(proc)) == 2 and victim.pid not in {c.pid for c in _children(proc)},
                  15, "a replacement process")
        _wait_for(lambda: {i for i, _ in _ran(out)} == set(range(80)), 40, "every call (the lease returns "
                  "the killed child's messages)")
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=40)
    assert proc.returncode == 0, stderr
    assert "died unexpectedly (killed by SIGKILL)" in stderr
    assert "restarts=1" in stdout
    assert len({pid for _, pid in _ran(out)}) >= 2


def test_sigterm_stops_children_gracefully_and_loses_nothing(tmp_path):
    url = f"sqlite:///{tmp_path}/q.db?lease=2"
    out = tmp_path / "ran.txt"
    proc = _start(tmp_path, url, out, "spawn", n=150, sleep=0.2, procs=3)
    _wait_for(lambda: len(_ran(out)) >= 6, 30, "the first calls")
    children = _children(proc)
    assert len(children) == 3
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=40)
    assert proc.returncode == 0, stderr
    assert "bye" in stdout and "alive=0" in stdout
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
    first = _ran(out)
    assert 0 < len(first) < 150
    # a fresh group finishes the rest: nothing was lost on the way down, nothing ran twice
    proc = _start(tmp_path, url, out, "fork", n=0, sleep=0.0, procs=2, idle=1.0)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    ran = [i for i, _ in _ran(out)]
    assert sorted(ran) == list(range(150)), "a graceful stop must neither lose nor repeat a call"


def test_hard_timeout_kills_the_process_and_dead_letters_the_call(tmp_path):
    url = f"sqlite:///{tmp_path}/q.db?lease=2"
    out = tmp_path / "ran.txt"
    proc = _start(tmp_path, url, out, "fork", n=10, sleep=0.0, procs=1, env={"HARD_TIMEOUT": "1"})
    try:
        first = _children(proc)[0].pid
        _wait_for(lambda: {i for i, _ in _ran(out)} == set(range(10)), 20, "the other calls")
        _wait_for(lambda: callq.connect(url).size("procs.dlq") == 1, 20, "the hanging call in the DLQ")
        # the kill follows the soft timeout by HARD_KILL_GRACE; then the child is replaced
        _wait_for(lambda: [c.pid for c in _children(proc)] not in ([], [first]), 10, "the kill and restart")
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=40)
        callq.connect(url).close()
    assert proc.returncode == 0, stderr
    assert "past hard_timeout=1.0s; killing the process" in stderr
    assert "hard_kills=1" in stdout
    assert -1 not in {i for i, _ in _ran(out)}


def test_spawn_refuses_a_task_defined_in_a_function(mem_url):
    @callq.task("local", broker=mem_url)
    def local(x: int) -> None:
        pass

    with pytest.raises(callq.ConfigError, match="defined inside a function"):
        local.consume(processes=2, start_method="spawn")
    assert callq.running_consumers() == []


@pytest.mark.parametrize("kwargs, match", [
    ({"processes": 0}, "processes must be an integer >= 1"),
    ({"processes": True}, "processes must be an integer >= 1"),
    ({"processes": 2, "start_method": "teleport"}, "start method 'teleport' is not available"),
    ({"processes": 2, "hard_timeout": -1}, "hard_timeout must be a number"),
    ({"hard_timeout": 5}, "need processes=N"),
])
def test_bad_process_options_are_config_errors(mem_url, kwargs, match):
    @callq.task("bad", broker=mem_url)
    def f(x: int) -> None:
        pass

    with pytest.raises(callq.ConfigError, match=match):
        f.consume(**kwargs)
    assert callq.running_consumers() == []


def test_start_method_from_environment(monkeypatch):
    monkeypatch.setenv("CALLQ_START_METHOD", "spawn")
    assert resolve_start_method() == "spawn"
    assert resolve_start_method("fork") == "fork"
    monkeypatch.setenv("CALLQ_START_METHOD", "nope")
    with pytest.raises(callq.ConfigError):
        resolve_start_method()


CRASHING = textwrap.dedent("""
    import logging, os, sys
    import callq

    logging.basicConfig(level=logging.INFO, format="%(process)d %(name)s %(message)s")

    @callq.task("crashing", broker=sys.argv[1])
    def crash(i):
        os._exit(3)

    if __name__ == "__main__":
        crash.push_many((i,) for i in range(5))
        group = crash.consume(processes=1, max_restarts=1)
        callq.wait()
        print(f"restarts={group.restarts} alive={group.alive} error={group.error}", flush=True)
""")


def test_a_child_that_keeps_crashing_makes_the_group_give_up(tmp_path):
    script = tmp_path / "crashing.py"
    script.write_text(CRASHING)
    r = subprocess.run([sys.executable, str(script), f"sqlite:///{tmp_path}/q.db?lease=1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "restarts=1 alive=0 error=worker process of crashing died 2 times in a row" in r.stdout
    assert "died unexpectedly (exit code 3); restarting it in 0.5s" in r.stderr
