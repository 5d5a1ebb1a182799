"""Process-level lifecycle: what runs, waiting for it, and SIGINT/SIGTERM.

Consumers and process groups register here while they run; :func:`wait` blocks until none
runs; the first signal stops them gracefully, a second one exits at once.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any, Protocol

log = logging.getLogger("callq.worker")

_running: set[Any] = set()
_running_lock = threading.Condition()
_signals_installed = False
_previous_handlers: dict[int, Any] = {}


def install_signal_handlers() -> None:
    """SIGINT/SIGTERM stop every consumer gracefully (main thread only; leaves custom handlers alone)."""
    global _signals_installed
    if _signals_installed or threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        current = signal.getsignal(sig)
        if current in (signal.SIG_DFL, signal.default_int_handler, None):
            _previous_handlers[sig] = current
            signal.signal(sig, _on_signal)
    threading.Thread(target=_signal_watcher, name="callq-signals", daemon=True).start()
    _signals_installed = True


_signal_count = 0
_signals_handled = 0


def _on_signal(signum: int, frame: Any) -> None:
    # Runs between bytecodes of the main thread: take no lock here (the interrupted code, or
    # the first signal's handler, may hold it); the watcher thread does the stopping.
    global _signal_count
    if not _running:
        prev = _previous_handlers.get(signum, signal.SIG_DFL)
        if callable(prev):
            prev(signum, frame)
        raise SystemExit(128 + signum)
    _signal_count += 1
    if _signal_count >= 2:
        # at once: the watcher hands back every unfinished message; the dispatcher threads
        # (not daemons) keep the process alive only until that is done
        raise SystemExit(128 + signum)


def _signal_watcher() -> None:
    global _signals_handled
    while True:
        time.sleep(0.05)
        if _signal_count > _signals_handled:
            first = _signals_handled == 0
            _signals_handled = _signal_count
            running = running_consumers()
            if first and _signal_count == 1:
                log.info("signal: stopping %d consumer(s) gracefully (again to exit at once)", len(running))
                for c in running:
                    c.stop()
            else:
                log.warning("second signal: exiting at once; unfinished messages go back to the queue")
                for c in running:
                    abort = getattr(c, "abort", None)
                    try:
                        abort() if abort is not None else c.stop()
                    except Exception:  # noqa: BLE001
                        log.exception("could not abort %r", c)


class ConsumerCrashed(RuntimeError):
    """A consumer stopped because of an error it could not recover from (see the log)."""


_crashed: list[str] = []


def report_crash(what: str) -> None:
    """Called by a consumer that died: :func:`wait` raises once everything stopped."""
    with _running_lock:
        _crashed.append(what)


class Stoppable(Protocol):
    """What :func:`wait` and the signal handlers need of something running (a Consumer, a ProcessGroup)."""

    def stop(self) -> None: ...

    @property
    def stopping(self) -> bool: ...


def register_running(obj: Stoppable) -> None:
    """Make ``wait()`` block while ``obj`` runs, and SIGINT/SIGTERM stop it."""
    with _running_lock:
        _running.add(obj)  # type: ignore[arg-type]


def unregister_running(obj: Stoppable) -> None:
    with _running_lock:
        _running.discard(obj)  # type: ignore[arg-type]
        _running_lock.notify_all()


def _after_fork_in_child() -> None:
    """The parent's consumers did not survive fork (only the forking thread does)."""
    global _running_lock, _running, _signal_count, _signals_handled, _signals_installed
    _running_lock = threading.Condition()
    _running = set()
    _crashed.clear()
    _signal_count = _signals_handled = 0
    _signals_installed = False


os.register_at_fork(after_in_child=_after_fork_in_child)


def running_consumers() -> list[Any]:
    with _running_lock:
        return list(_running)


def wait(timeout: float | None = None) -> bool:
    """Block until every consumer of this process has stopped (SIGINT/SIGTERM stop them).

    Returns False if ``timeout`` passed first. Raises :class:`ConsumerCrashed` if a consumer
    stopped because of an error (so a worker process exits non-zero, with the cause logged).
    """
    install_signal_handlers()
    deadline = None if timeout is None else time.monotonic() + timeout
    with _running_lock:
        while _running:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            # wake regularly so signals are handled promptly in the main thread
            _running_lock.wait(0.2 if remaining is None else min(0.2, remaining))
        if _crashed:
            crashed = "; ".join(_crashed)
            _crashed.clear()
            raise ConsumerCrashed(crashed)
    return True


def stop_all(wait_for: bool = True, timeout: float | None = None) -> None:
    for c in running_consumers():
        c.stop()
    if wait_for:
        wait(timeout)


