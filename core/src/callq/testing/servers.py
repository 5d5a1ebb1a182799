"""Throwaway server processes on 127.0.0.1 for plugins' tests and benchmarks (standard library only).

The ``testing`` modules of callq-kafka, callq-mongo and callq-pulsar start their servers with
these: a free port, a process in its own session that dies with the test process (Linux), a
wait until it answers that fails with its log, and a stop that leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class ServerError(RuntimeError):
    """A test server could not be installed or started."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    """Whether ``port`` of 127.0.0.1 can be bound now (for servers that need known ports)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def answers(port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    os.setsid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn(cmd: Sequence[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own session, output to ``log``; it is killed if this process dies."""
    out = open(log, "wb")  # noqa: SIM115 - the child owns it
    try:
        return subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                preexec_fn=_die_with_parent)
    finally:
        out.close()


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM the process group of a :func:`spawn`-ed process; SIGKILL it after ``timeout``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def log_tail(path: Path, limit: int = 5000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return "(no log)"


def wait_until(ready: Callable[[], bool], procs: Sequence[subprocess.Popen[bytes]], what: str, timeout: float,
               log_text: Callable[[], str], pause: float = 0.1) -> None:
    """Return once ``ready()`` is true (an exception counts as not yet); raise ServerError with
    the server's log if one of ``procs`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        dead = next((p for p in procs if p.poll() is not None), None)
        if dead is not None:
            raise ServerError(f"{what} exited with {dead.returncode} while starting; its log:\n{log_text()}")
        try:
            if ready():
                return
        except Exception as exc:  # noqa: BLE001 - not up yet
            last = exc
        time.sleep(pause)
    raise ServerError(f"{what} did not answer within {timeout:.0f}s (last error: {last}); its log:\n{log_text()}")
