"""Crash test on real processes: kill -9 workers mid-run; every call must still run.

Used by the contract tests of every broker that claims acks::

    report = run_crash_test(url, calls=5000, kills=2, workdir=tmp_path)
    print(report)
    assert report.lost == 0
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..broker import Connection
from ..message import encode, new_meta
from .contract import fresh_queue_name


@dataclass(frozen=True)
class CrashReport:
    calls: int
    ran_unique: int
    lost: int
    duplicates: int
    kills: int
    final_exit_code: int | None
    seconds: float

    def __str__(self) -> str:
        return (f"crash test: {self.calls} calls, {self.kills} kill -9, ran {self.ran_unique} unique, "
                f"lost {self.lost}, duplicates {self.duplicates}, final worker exit {self.final_exit_code}, "
                f"{self.seconds:.1f}s")


def _ran(workdir: Path) -> Counter[int]:
    seen: Counter[int] = Counter()
    for path in workdir.glob("ran-*.log"):
        for line in path.read_text().splitlines():
            if line:
                seen[int(line)] += 1
    return seen


def _start_worker(url: str, queue: str, workdir: Path, concurrency: int, n: int) -> subprocess.Popen[bytes]:
    log = open(workdir / f"worker-{n}.stderr", "wb")  # noqa: SIM115 - handed to the child
    return subprocess.Popen(
        [sys.executable, "-m", "callq.testing.crash", url, queue, str(workdir), str(concurrency)],
        stdout=log, stderr=subprocess.STDOUT,
    )


def run_crash_test(broker_url: str, *, calls: int, kills: int = 2, workdir: Path,
                   queue: str | None = None, concurrency: int = 8, timeout: float = 240.0) -> CrashReport:
    """Publish ``calls`` calls, kill -9 the worker ``kills`` times mid-run, finish with a fresh one."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    queue = queue or fresh_queue_name("cq-crash")
    started = time.monotonic()
    conn = Connection(broker_url)
    try:
        if not conn.capabilities.backlog:
            raise RuntimeError("the crash test needs a broker that keeps a backlog")
        for start in range(0, calls, 500):
            conn.publish(queue, [encode({"i": i}, new_meta()) for i in range(start, min(calls, start + 500))])
        deadline = started + timeout
        worker = _start_worker(broker_url, queue, workdir, concurrency, 0)
        for k in range(kills):
            threshold = calls * (k + 1) // (kills + 2)
            while len(_ran(workdir)) < threshold and time.monotonic() < deadline:
                if worker.poll() is not None:
                    raise RuntimeError(f"worker exited early with {worker.returncode}; see {workdir}")
                time.sleep(0.02)
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait()
            worker = _start_worker(broker_url, queue, workdir, concurrency, k + 1)
        while len(_ran(workdir)) < calls and time.monotonic() < deadline:
            if worker.poll() is not None:
                raise RuntimeError(f"final worker exited early with {worker.returncode}; see {workdir}")
            time.sleep(0.1)
        worker.send_signal(signal.SIGTERM)
        try:
            code: int | None = worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            code = None
        seen = _ran(workdir)
        expected = set(range(calls))
        return CrashReport(
            calls=calls,
            ran_unique=len(expected & set(seen)),
            lost=len(expected - set(seen)),
            duplicates=sum(c - 1 for c in seen.values() if c > 1),
            kills=kills,
            final_exit_code=code,
            seconds=time.monotonic() - started,
        )
    finally:
        try:
            conn.purge(queue)
            conn.purge(f"{queue}.dlq")
        finally:
            conn.close()


def _worker_main(url: str, queue: str, workdir: str, concurrency: int) -> None:
    import logging
    import random

    from ..lifecycle import wait
    from ..task import task

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(process)d %(name)s %(message)s")
    out = os.open(os.path.join(workdir, f"ran-{os.getpid()}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    @task(queue, broker=url, concurrency=concurrency, max_retries=0)
    def record(i: int) -> None:
        time.sleep(random.uniform(0.0005, 0.003))
        os.write(out, f"{i}\n".encode())

    record.consume()
    wait()


if __name__ == "__main__":
    _worker_main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
