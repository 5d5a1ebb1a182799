"""Crash test on real processes: kill -9 workers mid-run; every call must still run.

Used by the contract tests of every broker that claims acks::

    report = run_crash_test(url, calls=5000, kills=2, workdir=tmp_path)
    print(report)
    assert report.lost == 0
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..broker import Connection
from ..message import encode, new_meta
from .contract import fresh_queue_name

log = logging.getLogger("callq.testing")


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


def ran_calls(workdir: Path) -> Counter[int]:
    """How often each call ran, from the logs of the workers :func:`start_worker` started."""
    seen: Counter[int] = Counter()
    for path in Path(workdir).glob("ran-*.log"):
        for line in path.read_text().splitlines():
            if line:
                seen[int(line)] += 1
    return seen


def publish_calls(conn: Connection, queue: str, calls: int) -> None:
    """Publish calls ``{"i": 0}`` .. ``{"i": calls - 1}`` to ``queue``, 500 per batch."""
    for start in range(0, calls, 500):
        conn.publish(queue, [encode({"i": i}, new_meta()) for i in range(start, min(calls, start + 500))])


def stop_workers(workers: Sequence[subprocess.Popen[bytes]], timeout: float = 20.0) -> None:
    """SIGTERM every worker, then wait for each (kill -9 one that is still running after ``timeout``)."""
    for w in workers:
        w.send_signal(signal.SIGTERM)
    for w in workers:
        try:
            w.wait(timeout)
        except subprocess.TimeoutExpired:
            w.kill()


def start_worker(url: str, queue: str, workdir: Path, concurrency: int = 8, n: int = 0) -> subprocess.Popen[bytes]:
    """A worker process running calls ``{"i": N}`` of ``queue``, logging each to ``workdir``."""
    log = open(Path(workdir) / f"worker-{n}.stderr", "wb")  # noqa: SIM115 - handed to the child
    return subprocess.Popen(
        [sys.executable, "-m", "callq.testing.crash", url, queue, str(workdir), str(concurrency)],
        stdout=log, stderr=subprocess.STDOUT,
    )


@dataclass(frozen=True)
class FailoverReport:
    calls: int
    ran_before: int
    resumed_after: float | None  # seconds from the fault until work went on
    done_after: float  # seconds from the fault until every call ran (or the timeout)
    lost: list[int]
    duplicates: int

    def __str__(self) -> str:
        resumed = f"{self.resumed_after:.1f}s" if self.resumed_after is not None else "never"
        return (f"{self.calls} calls, fault after {self.ran_before} ran, work resumed after {resumed}, "
                f"all done {self.done_after:.1f}s after the fault, lost {len(self.lost)}, "
                f"duplicates {self.duplicates}")


def watch_failover(workers: Sequence[subprocess.Popen[bytes]], workdir: Path, calls: int,
                   fault: Callable[[], None], *, timeout: float = 90.0) -> FailoverReport:
    """With ``workers`` running calls 0..calls-1, call ``fault()`` (kill a server node) once a
    third ran and every worker ran one (a worker still starting would meet the fault while it
    connects, another test); wait until every call ran or ``timeout``. AssertionError if a
    worker died."""
    deadline = time.monotonic() + timeout

    def all_working() -> bool:
        logs = [Path(workdir) / f"ran-{w.pid}.log" for w in workers]
        return all(log.exists() and log.stat().st_size > 0 for log in logs)

    while (len(ran_calls(workdir)) < calls // 3 or not all_working()) and time.monotonic() < deadline:
        assert all(w.poll() is None for w in workers), "a worker died before the fault"
        time.sleep(0.02)
    before = len(ran_calls(workdir))
    fault_at = time.monotonic()
    fault()
    resumed_at = None
    while (ran := len(ran_calls(workdir))) < calls and time.monotonic() < deadline:
        if resumed_at is None and ran > before + 20:
            resumed_at = time.monotonic()
        assert all(w.poll() is None for w in workers), "a worker died"
        time.sleep(0.05)
    done_at = time.monotonic()
    seen = ran_calls(workdir)
    return FailoverReport(calls=calls, ran_before=before,
                          resumed_after=None if resumed_at is None else resumed_at - fault_at,
                          done_after=done_at - fault_at, lost=sorted(set(range(calls)) - set(seen)),
                          duplicates=sum(c - 1 for c in seen.values() if c > 1))


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
        publish_calls(conn, queue, calls)
        deadline = started + timeout
        worker = start_worker(broker_url, queue, workdir, concurrency, 0)
        for k in range(kills):
            threshold = calls * (k + 1) // (kills + 2)
            while len(ran_calls(workdir)) < threshold and time.monotonic() < deadline:
                if worker.poll() is not None:
                    raise RuntimeError(f"worker exited early with {worker.returncode}; see {workdir}")
                time.sleep(0.02)
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait()
            worker = start_worker(broker_url, queue, workdir, concurrency, k + 1)
        while len(ran_calls(workdir)) < calls and time.monotonic() < deadline:
            if worker.poll() is not None:
                raise RuntimeError(f"final worker exited early with {worker.returncode}; see {workdir}")
            time.sleep(0.1)
        worker.send_signal(signal.SIGTERM)
        try:
            code: int | None = worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            code = None
        seen = ran_calls(workdir)
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
        except Exception as exc:  # noqa: BLE001 - cleaning up must not hide the report
            log.warning("crash test: could not purge %s after the run: %s: %s", queue, type(exc).__name__, exc)
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
