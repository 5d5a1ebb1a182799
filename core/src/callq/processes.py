"""Process mode: several worker processes consume one task's queue, supervised by the parent.

``f.consume(processes=4)`` starts 4 child processes; each runs ``f.consume()`` (its own
elastic pool) and ``callq.wait()``. The parent restarts a child that dies unexpectedly (with
a backoff when it keeps dying), forwards SIGTERM to the children when it is stopped, and
(optionally) kills a child whose call ran longer than ``hard_timeout``.

Start methods: ``fork`` (the child inherits the task), ``spawn`` and ``forkserver`` (the
child imports the task again by module and qualified name; ``__main__`` tasks are found in
the main script, re-run under the name ``__mp_main__``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import runpy
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import broker as _broker
from . import lifecycle as _lifecycle
from .errors import ConfigError
from .options import TaskOptions

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess
    from multiprocessing.sharedctypes import Synchronized

    from .task import Task

log = logging.getLogger("callq.processes")

START_METHODS = ("fork", "spawn", "forkserver")
SUPERVISE_STEP = 0.1
FAST_CRASH = 5.0  # a child that dies within this many seconds of its start counts as crash-looping
MAX_BACKOFF = 30.0
HARD_KILL_GRACE = 1.0  # seconds past hard_timeout (the soft timeout settles the message first)
STOP_SLACK = 10.0  # seconds past shutdown_timeout before a stopping child is killed
ABORT_GRACE = 3.0  # seconds a child has to hand back its messages after a second signal


def resolve_start_method(requested: str | None = None) -> str:
    """The start method to use: the argument, else ``CALLQ_START_METHOD``, else the default.

    Default: ``fork`` on Linux while this process runs a single thread (fork copies only the
    calling thread: locks held by other threads would stay locked in the child), otherwise
    ``spawn`` (also the macOS and Windows default).
    """
    method = requested or os.environ.get("CALLQ_START_METHOD") or None
    available = multiprocessing.get_all_start_methods()
    if method is not None:
        if method not in START_METHODS or method not in available:
            raise ConfigError(f"start method {method!r} is not available here; use one of "
                              f"{', '.join(m for m in START_METHODS if m in available)}")
        return method
    if sys.platform.startswith("linux") and "fork" in available and threading.active_count() == 1:
        return "fork"
    return "spawn"


@dataclass(frozen=True)
class _Where:
    """Where a child finds the task again: module, qualified name, and the main script."""

    module: str
    qualname: str
    main_path: str | None


def locate(task: Task[Any, Any]) -> _Where:
    """How a spawned child re-imports ``task``; ConfigError if it cannot."""
    fn = task.fn
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qualname:
        raise ConfigError(f"{task.name}: the function has no __module__/__qualname__; a spawned "
                          "process cannot import it again")
    if "<locals>" in qualname or "<lambda>" in qualname:
        raise ConfigError(
            f"{task.name} is defined inside a function; a spawned worker process cannot import it. "
            "Define the task at module level, or use start_method='fork' (Linux)")
    main_path = None
    mod = sys.modules.get(module)
    if module in ("__main__", "__mp_main__"):
        main_path = getattr(mod, "__file__", None)
        spec = getattr(mod, "__spec__", None)
        if main_path is None and spec is None:
            raise ConfigError(
                f"{task.name} is defined in an interactive session or `python -c`; a spawned "
                "worker process cannot import it. Put it in a module or script file, or use "
                "start_method='fork' (Linux)")
    if mod is None:
        raise ConfigError(f"{task.name}: module {module!r} is not imported; cannot locate the task")
    found = _resolve(mod, qualname)
    if not _same_task(found, task):
        raise ConfigError(
            f"{task.name}: {module}.{qualname} does not name this task (it was renamed, replaced or "
            "created dynamically); a spawned worker process could not find it. Assign the task to a "
            "module-level name equal to the function's name, or use start_method='fork' (Linux)")
    return _Where(module, qualname, main_path)


def _resolve(obj: Any, qualname: str) -> Any:
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _same_task(found: Any, task: Task[Any, Any]) -> bool:
    return found is task or found is task.fn or getattr(found, "fn", None) is task.fn


def _find_in_child(where: _Where) -> Callable[..., Any]:
    """The task's function, imported again in a spawned child."""
    if where.module in ("__main__", "__mp_main__"):
        mod: Any = sys.modules.get("__main__")
        found = _resolve(mod, where.qualname) if mod is not None else None
        if found is None and where.main_path:
            found = _resolve(_Namespace(runpy.run_path(where.main_path, run_name="__mp_main__")), where.qualname)
    else:
        import importlib

        found = _resolve(importlib.import_module(where.module), where.qualname)
    fn = getattr(found, "fn", found)
    if not callable(fn):
        raise ConfigError(f"cannot find task {where.module}.{where.qualname} in the worker process")
    return fn  # type: ignore[no-any-return]


class _Namespace:
    def __init__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)


@dataclass
class _ChildSpec:
    """What a child needs. ``task`` travels only under fork (nothing is pickled then)."""

    queue: str
    options: dict[str, Any]
    where: _Where | None
    task: Any
    hard_timeout: float | None
    log_level: int | None


class ProcessGroup:
    """Worker processes consuming one task's queue, supervised by this (parent) process.

    ``stop()`` asks the children to stop gracefully (SIGTERM), ``join()`` waits for them,
    ``alive`` counts the live ones. ``callq.wait()`` in the parent blocks while the group runs.
    """

    def __init__(self, task: Task[Any, Any], processes: int, *, start_method: str | None = None,
                 hard_timeout: float | None = None, max_restarts: int = 5) -> None:
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise ConfigError(f"processes must be an integer >= 1, got {processes!r}")
        if hard_timeout is not None:
            if isinstance(hard_timeout, bool) or not isinstance(hard_timeout, (int, float)) or hard_timeout <= 0:
                raise ConfigError(f"hard_timeout must be a number of seconds > 0, got {hard_timeout!r}")
            if _is_async(task) or task.options.mode != "threads":
                raise ConfigError(f"{task.name}: hard_timeout is for threaded tasks; async calls are "
                                  "really cancelled by timeout=")
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
            raise ConfigError(f"max_restarts must be an integer >= 0, got {max_restarts!r}")
        self.task = task
        self.processes = processes
        self.start_method = resolve_start_method(start_method)
        self.hard_timeout = float(hard_timeout) if hard_timeout is not None else None
        self.max_restarts = max_restarts
        self.restarts = 0
        self.hard_kills = 0
        self.error: str | None = None
        self._ctx = multiprocessing.get_context(self.start_method)
        where = locate(task) if self.start_method != "fork" else None
        options = dataclasses.asdict(task.options)
        if self.hard_timeout is not None:
            # the soft timeout settles the message (retry/dead-letter) before the child is killed,
            # so a call that always hangs cannot come back for ever
            soft = task.options.timeout
            options["timeout"] = min(soft, self.hard_timeout) if soft else self.hard_timeout
        root = logging.getLogger()
        self._spec = _ChildSpec(
            queue=task.options.queue, options=options, where=where,
            task=task if self.start_method == "fork" else None, hard_timeout=self.hard_timeout,
            log_level=root.getEffectiveLevel() if root.handlers else None,
        )
        self._procs: list[BaseProcess | None] = [None] * processes
        self._oldest: list[Synchronized[float] | None] = [None] * processes
        self._started_at = [0.0] * processes
        self._fast_crashes = [0] * processes
        self._restart_at: list[float | None] = [None] * processes
        self._finished = [False] * processes
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._stop_deadline: float | None = None
        self._killed: set[int | None] = set()
        self._supervisor: threading.Thread | None = None

    def __repr__(self) -> str:
        return (f"<callq ProcessGroup {self.task.name} processes={self.processes} "
                f"start_method={self.start_method} alive={self.alive}>")

    # --- public --------------------------------------------------------------------------------

    @property
    def queue(self) -> str:
        return self.task.options.queue

    @property
    def pids(self) -> list[int]:
        """PIDs of the live children."""
        with self._lock:
            return [p.pid for p in self._procs if p is not None and p.pid is not None and p.is_alive()]

    @property
    def alive(self) -> int:
        """How many children are alive."""
        return len(self.pids)

    @property
    def running(self) -> bool:
        return self._supervisor is not None and not self._stopped.is_set()

    def start(self) -> ProcessGroup:
        if self._supervisor is not None:
            return self
        _lifecycle.install_signal_handlers()
        with self._lock:
            for slot in range(self.processes):
                self._spawn(slot)
        _lifecycle.register_running(self)
        self._supervisor = threading.Thread(target=self._supervise, name=f"callq-{self.queue}-supervisor",
                                            daemon=True)
        self._supervisor.start()
        log.info("started %d worker process(es) for %s (%s): pids %s", self.processes, self.queue,
                 self.start_method, ", ".join(map(str, self.pids)))
        return self

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Stop gracefully: each child stops fetching, finishes its running calls, puts the
        messages it had not started back on the queue, and exits."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._stop_deadline = time.monotonic() + self.task.options.shutdown_timeout + STOP_SLACK
        with self._lock:
            procs = [p for p in self._procs if p is not None]
        for p in procs:
            if p.is_alive():
                _signal(p, signal.SIGTERM)

    def abort(self) -> None:
        """Stop at once (a second signal): each child gives back every unfinished message and
        exits; a child still alive after a few seconds is killed."""
        first = not self._stopping.is_set()
        self.stop()
        self._stop_deadline = time.monotonic() + ABORT_GRACE
        with self._lock:
            procs = [p for p in self._procs if p is not None]
        for p in procs:
            if p.is_alive():
                if first:
                    time.sleep(0.15)  # two signals at once could reach the child as one
                _signal(p, signal.SIGTERM)

    def kill(self) -> None:
        """Kill every child at once (SIGKILL): their messages return after the broker's lease."""
        self._stopping.set()
        self._stop_deadline = time.monotonic()
        with self._lock:
            procs = [p for p in self._procs if p is not None]
        for p in procs:
            if p.is_alive():
                p.kill()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every child has exited; False if ``timeout`` passed first."""
        if self._supervisor is None:
            return True
        return self._stopped.wait(timeout)

    # --- supervision ---------------------------------------------------------------------------

    def _spawn(self, slot: int) -> None:
        oldest = self._ctx.Value("d", 0.0, lock=False) if self.hard_timeout else None
        proc = self._ctx.Process(target=_child_main, args=(self._spec, oldest),
                                 name=f"callq-{self.queue}-{slot}", daemon=True)
        with _fork_guard(self.start_method):
            proc.start()
        self._procs[slot] = proc
        self._oldest[slot] = oldest
        self._started_at[slot] = time.monotonic()
        self._restart_at[slot] = None

    def _supervise(self) -> None:
        try:
            while True:
                sentinels = [p.sentinel for p in self._procs if p is not None and p.exitcode is None]
                if sentinels:
                    multiprocessing.connection.wait(sentinels, SUPERVISE_STEP)
                else:
                    time.sleep(SUPERVISE_STEP)
                with self._lock:
                    if self._check_children():
                        return
        except BaseException:  # noqa: BLE001
            log.exception("supervisor of %s crashed; killing its worker processes", self.queue)
            self.kill()
        finally:
            self._finish()

    def _check_children(self) -> bool:
        """One round of supervision; True once every child has ended for good."""
        now = time.monotonic()
        stopping = self._stopping.is_set()
        for slot in range(self.processes):
            if self._finished[slot]:
                continue
            proc = self._procs[slot]
            if proc is not None:
                if proc.exitcode is None:
                    if (stopping and self._stop_deadline is not None and now > self._stop_deadline
                            and proc.pid not in self._killed):
                        self._killed.add(proc.pid)
                        log.warning("worker process %s of %s did not stop in time; killing it",
                                    proc.pid, self.queue)
                        proc.kill()
                    else:
                        self._check_hard_timeout(slot, proc)
                    continue
                self._procs[slot] = None
                self._exited(slot, proc, now, stopping)  # not closed: multiprocessing reaps it
                stopping = self._stopping.is_set()
            if self._finished[slot]:
                continue
            at = self._restart_at[slot]
            if stopping or at is None:
                self._finished[slot] = True
            elif now >= at:
                self._spawn(slot)
                self.restarts += 1
                log.info("restarted worker process %d of %s: pid %s", slot, self.queue,
                         self._procs[slot].pid)  # type: ignore[union-attr]
        return all(self._finished)

    def _exited(self, slot: int, proc: BaseProcess, now: float, stopping: bool) -> None:
        """Decide what follows a child's exit: finished, or a restart at ``_restart_at[slot]``."""
        code = proc.exitcode
        if stopping:
            self._finished[slot] = True
            return
        if code == 0:
            # a child stops on its own only when its consumer stopped (stop_when_idle)
            log.info("worker process %s of %s finished", proc.pid, self.queue)
            self._finished[slot] = True
            return
        if code == -getattr(signal, "SIGKILL", 9) and self._hard_killed(slot):
            self._restart_at[slot] = now
            return
        lived = now - self._started_at[slot]
        self._fast_crashes[slot] = self._fast_crashes[slot] + 1 if lived < FAST_CRASH else 0
        crashes = self._fast_crashes[slot]
        if crashes > self.max_restarts:
            self.error = (f"worker process of {self.queue} died {crashes} times in a row within "
                          f"{FAST_CRASH:.0f}s of starting (last: {_describe_exit(code)}); giving up")
            log.error("%s; stopping the group", self.error)
            self._finished[slot] = True
            self._stopping.set()
            self._stop_deadline = now + self.task.options.shutdown_timeout + STOP_SLACK
            for p in self._procs:
                if p is not None and p.exitcode is None:
                    _signal(p, signal.SIGTERM)
            return
        delay = min(0.5 * 2 ** (crashes - 1), MAX_BACKOFF) if crashes else 0.0
        log.warning("worker process %s of %s died unexpectedly (%s); restarting it%s", proc.pid, self.queue,
                    _describe_exit(code), f" in {delay:.1f}s" if delay else "")
        self._restart_at[slot] = now + delay

    def _check_hard_timeout(self, slot: int, proc: BaseProcess) -> None:
        oldest = self._oldest[slot]
        if oldest is None or self.hard_timeout is None:
            return
        started = oldest.value
        if started > 0 and time.time() - started > self.hard_timeout + HARD_KILL_GRACE:
            log.error("a call of %s in worker process %s ran %.1fs, past hard_timeout=%ss; killing the "
                      "process (its other unacked messages return after the broker's lease)",
                      self.queue, proc.pid, time.time() - started, self.hard_timeout)
            oldest.value = -1.0  # marks the kill as ours
            self.hard_kills += 1
            proc.kill()

    def _hard_killed(self, slot: int) -> bool:
        oldest = self._oldest[slot]
        return oldest is not None and oldest.value == -1.0

    def _finish(self) -> None:
        self._stopping.set()
        self._stopped.set()
        _lifecycle.unregister_running(self)
        log.info("worker processes of %s stopped (%d restart(s))", self.queue, self.restarts)


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _signal(proc: BaseProcess, sig: int) -> None:
    if proc.pid is None:
        return
    try:
        if sys.platform == "win32":
            proc.terminate()
        else:
            os.kill(proc.pid, sig)
    except (ProcessLookupError, OSError):
        pass


def _is_async(task: Task[Any, Any]) -> bool:
    import inspect

    return inspect.iscoroutinefunction(task.fn)


@contextlib.contextmanager
def _fork_guard(method: str) -> Iterator[None]:
    """Under fork, hold callq's own locks so no other thread holds them at the moment of fork."""
    if method != "fork":
        yield
        return
    locks = [lk for lk in (getattr(_lifecycle, "_running_lock", None), getattr(_broker, "_connections_lock", None))
             if lk is not None]
    with contextlib.ExitStack() as stack:
        for lk in locks:
            stack.enter_context(lk)
        yield


# --- the child ---------------------------------------------------------------------------------

def _child_main(spec: _ChildSpec, oldest: Synchronized[float] | None) -> None:
    from .task import Task

    # the parent forwards SIGTERM; a terminal's Ctrl-C reaches the whole process group, so the
    # child ignores SIGINT (two signals would mean "stop at once" to the runner)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if spec.task is not None:  # forked: the at-fork hooks of runner and broker reset their state
        fn = spec.task.fn
    else:
        if spec.log_level is not None and not logging.getLogger().handlers:
            logging.basicConfig(level=spec.log_level,
                                format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
        assert spec.where is not None
        fn = _find_in_child(spec.where)
    options = TaskOptions(**spec.options)
    if oldest is not None:
        fn = _tracked(fn, oldest)
    task = Task(fn, options)
    consumer = task.consume()
    # The handler only records the signal: taking a lock in a handler can deadlock when a second
    # signal interrupts the first handler (Ctrl-C, a process-group kill and the parent's
    # forwarding can arrive together).
    signals: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: signals.append(signum))
    parent = multiprocessing.parent_process()
    if parent is not None:
        def orphaned() -> None:
            parent.join()  # returns when the parent process is gone
            if consumer.running:
                log.warning("parent process gone; worker process %d stops", os.getpid())
                signals.append(0)

        threading.Thread(target=orphaned, name="callq-orphan-watch", daemon=True).start()
    stopping = False
    while not consumer.join(0.1):
        if len(signals) >= 2 and not consumer.aborted:
            consumer.abort()  # a second SIGTERM: hand everything back and exit at once
        elif signals and not stopping:
            stopping = True
            consumer.stop()
    _broker.close_all()
    if consumer.error is not None:
        log.error("worker process %d exits: its consumer crashed (%s: %s)", os.getpid(),
                  type(consumer.error).__name__, consumer.error)
        sys.exit(1)


def _tracked(fn: Callable[..., Any], oldest: Synchronized[float]) -> Callable[..., Any]:
    """Wrap ``fn`` so the shared value holds the start time of the oldest running call (0: none)."""
    import functools

    running: dict[int, float] = {}
    lock = threading.Lock()

    @functools.wraps(fn)
    def run(**kwargs: Any) -> Any:
        me = threading.get_ident()
        with lock:
            running[me] = time.time()
            oldest.value = min(running.values())
        try:
            return fn(**kwargs)
        finally:
            with lock:
                running.pop(me, None)
                oldest.value = min(running.values()) if running else 0.0

    return run
