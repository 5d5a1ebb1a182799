"""The consumer: fetch within capacity, hand calls to the pool, settle their outcomes.

Broker-agnostic and control-agnostic: every decision about whether, when and how a call
runs is a control's (:mod:`callq.controls`); running a call is :mod:`callq.calls`' job.
Threads per consumer: a dispatcher, an acker, a monitor (heartbeats and control ticks)
and the pool's workers.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import plugins
from .broker import Connection, Delivery, connect
from .calls import MAX_LANES, CallRunner
from .context import CallContext
from .controls import ControlSet, Hold, safely
from .errors import ConfigError
from .held import HeldCalls, Holding
from .lanes import FetchLanes
from .lifecycle import register_running, report_crash
from .message import MalformedMessage, decode
from .outcomes import Outcomes
from .pool import AsyncioPool, ElasticPool
from .settle import HOST, Settler
from .state import StateStore
from .stopping import Stopping

if TYPE_CHECKING:
    from .task import Task

log = logging.getLogger("callq.worker")

FETCH_TIMEOUT = 1.0
MONITOR_STEP = 0.5
COUNTERS = ("received", "failed", "retried", "requeued", "dead", "malformed", "expired", "skipped", "timed_out")


@dataclass(frozen=True)
class Stats:
    """Counters of one consumer since it started."""

    received: int
    done: int
    failed: int
    retried: int
    requeued: int
    dead: int
    malformed: int
    expired: int
    skipped: int
    timed_out: int
    running: int
    threads: int
    elapsed: float


def _count_value(counter: itertools.count[int]) -> int:
    """Current value of an itertools.count without advancing it."""
    return int(repr(counter)[6:-1])


class Consumer(CallRunner, FetchLanes, Holding, Outcomes, Stopping):
    """Consumes one task's queue in this process."""

    def __init__(self, task: Task[Any, Any]) -> None:
        self.task = task
        self.options = opts = task.options
        self.queue = opts.queue
        self.conn: Connection = connect(opts.broker)
        self.is_async = inspect.iscoroutinefunction(task.fn)
        _check_mode(task, self.is_async)
        self.pool: ElasticPool | AsyncioPool
        if self.is_async:
            self.pool = AsyncioPool(opts.concurrency, name=f"callq-{opts.queue}")
        else:
            self.pool = ElasticPool(opts.concurrency, opts.keepalive, name=f"callq-{opts.queue}")
        self.limit = opts.prefetch_limit  # unacked messages held at most; deeper while calls are short
        self._limits = (opts.prefetch_limit, opts.short_call_prefetch_limit)
        self.consumer_id = f"{HOST}:{os.getpid()}:{id(self):x}"
        self.host = HOST
        self._lock = threading.Condition()
        self._unacked = 0
        self._held = HeldCalls()
        self._dispatcher_waiting = False
        self._refill_at = max(1, self.limit // 2)
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self.aborted = False
        self._handed_back = threading.Event()
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._done = itertools.count()  # next() is atomic: the hot path takes no lock
        self._started_at = 0.0
        self.last_delivery = time.monotonic()
        self.fetch_timeout = FETCH_TIMEOUT
        self._admit_all, self._admit_keys = True, frozenset()
        self.error: BaseException | None = None
        self._state_store: StateStore | None = None
        if opts.dedup or opts.distributed_qps:
            _ = self.state  # fail now, not in the middle of a run, if there is no shared store
        self.settler = Settler(self.conn, opts, self._on_settled, self._wake_for_acks)
        self._acks_with_fetch = self.conn.acks_with_fetch  # waiting acks travel with the next fetch
        self.controls = ControlSet.build(self)
        FetchLanes.__init__(self)
        CallRunner.__init__(self)

    @property
    def state(self) -> StateStore:
        if self._state_store is None:
            self._state_store = connect(self.options.state).state if self.options.state else self.conn.state
        return self._state_store

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Consumer:
        self._started_at = time.monotonic()
        started = []
        try:
            for control in self.controls.start:  # type: ignore[attr-defined]
                control.start()
                started.append(control)
            self._admit_all, self._admit_keys = self.controls.admit_filter()
            self.conn.hook.callq_consumer_started(consumer=self)
        except BaseException:
            for control in started:
                safely(f"{control.name}.stop", control.stop)
            self._stopped.set()
            raise
        register_running(self)
        # the dispatcher last: once it runs short calls it may keep the GIL, and this thread
        # would wait in Thread.start() for the others (seen: the whole queue run first)
        for target, name in ((self._ack_loop, "ack"), (self._monitor_loop, "monitor"),
                             (self._dispatch_loop, "dispatch")):
            threading.Thread(target=target, name=f"callq-{self.queue}-{name}", daemon=name != "dispatch").start()
        log.info("consuming %s from %s (concurrency %d%s)", self.queue, self.conn.url,
                 self.options.concurrency, f", qps {self.options.qps}" if self.options.qps else "")
        return self

    def stop(self) -> None:
        """Stop fetching; running calls finish, waiting ones go back to the queue."""
        self._stopping.set()
        self.settler.wake.set()
        with self._lock:
            self._lock.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    @property
    def running(self) -> bool:
        return self._started_at > 0 and not self._stopped.is_set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def in_flight(self) -> int:
        return self._unacked

    def stats(self) -> Stats:
        c = self._counts
        return Stats(received=c["received"], done=_count_value(self._done), failed=c["failed"],
                     retried=c["retried"], requeued=c["requeued"], dead=c["dead"], malformed=c["malformed"],
                     expired=c["expired"], skipped=c["skipped"], timed_out=c["timed_out"],
                     running=self.pool.busy - self.siblings, threads=self.pool.threads,
                     elapsed=(time.monotonic() - self._started_at) if self._started_at else 0.0)

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    # --- capacity and acks ---------------------------------------------------------------------

    def _on_settled(self, n: int) -> None:
        with self._lock:
            self._unacked -= n
            self._lock.notify_all()

    def _wake_for_acks(self, waiting_acks: int) -> None:
        # wake the dispatcher (once) when acks pile up or the pool is about to run dry
        if self._dispatcher_waiting and (waiting_acks >= self._refill_at or self._running_dry()):
            with self._lock:
                if self._dispatcher_waiting:
                    self._dispatcher_waiting = False
                    self._lock.notify_all()  # a sibling lane may wait on it too

    def _running_dry(self) -> bool:
        # calls in chunks: when a lane is free (a fetch per ack would claim one message at a time)
        pool, lanes = self.pool, self._lanes
        return pool.pending == 0 and (lanes > MAX_LANES or pool.busy < lanes)

    def _capacity(self) -> int:
        """Messages to fetch now. Acks waiting to go with that fetch count as done: the broker
        applies them before it claims (bounded prefetch holds there too)."""
        settler = self.settler
        with_fetch = self._acks_with_fetch
        while not self._stopping.is_set():
            if settler.to_requeue or (settler.to_ack or settler.carried) and not with_fetch:
                settler.flush()
            with self._lock:
                going = len(settler.to_ack) if with_fetch else 0
                free = self.limit - (self._unacked - len(self._held) - going)
                if free >= self._refill_at or free > 0 and self._running_dry():
                    return free
                self._dispatcher_waiting = True
                if with_fetch or not settler.to_ack:
                    self._lock.wait(self._wait_step())
                self._dispatcher_waiting = False
            self._release_due()
            self.pool.grow_if_starved()
        return 0

    def _ack_loop(self) -> None:
        self.settler.loop(self._stopped)

    # --- dispatcher ----------------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        backoff = 0.5
        controls = self.controls
        gates, limits, pacers = controls.gate, controls.limit, controls.pace  # type: ignore[attr-defined]
        gate_reason: str | None = None
        try:
            while not self._stopping.is_set():
                self._release_due()
                if gates:
                    reason = next((r for c in gates if (r := c.gate()) is not None), None)
                    if reason != gate_reason:
                        log.info("%s: %s", self.queue, f"{reason}; messages wait on the queue" if reason
                                 else f"{gate_reason} ended; consuming again")
                        gate_reason = reason
                    if reason is not None:
                        self.settler.flush()
                        self._stopping.wait(0.5)
                        continue
                free = self._capacity()
                if free <= 0:
                    break
                if self.siblings:
                    free = min(free, self.limit - self.limit // 2)  # the sibling lane fetches the rest
                for c in limits:
                    free = c.limit(free)
                acks, carried = (self.settler.take_acks(), self.settler.take_carried()) if self._acks_with_fetch \
                    else ([], [])
                try:
                    deliveries = self.conn.ack_fetch(acks, self.queue, free, self._wait_step(), carried)
                    self.settler.acked(len(acks))
                    backoff = 0.5
                except Exception as exc:  # noqa: BLE001 - the broker reconnects; we keep going
                    self.settler.untake(acks, carried)
                    log.warning("fetch from %s failed (%s: %s); retrying in %.1fs",
                                self.queue, type(exc).__name__, exc, backoff)
                    self._stopping.wait(backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
                if not deliveries:
                    self.pool.grow_if_starved()
                    continue
                ready = self._take_in(deliveries)
                if pacers:
                    self._submit_paced(ready)
                else:
                    self.submit_many(ready)
        except BaseException as exc:  # noqa: BLE001
            self.error = exc
            log.exception("dispatcher of %s crashed; stopping this consumer", self.queue)
            report_crash(f"consumer of {self.queue} crashed: {type(exc).__name__}: {exc}")
        finally:
            self._shutdown()

    def _submit_paced(self, ready: list[CallContext]) -> None:
        pacers = self.controls.pace  # type: ignore[attr-defined]
        for i, call in enumerate(ready):
            wait = max(c.pace() for c in pacers)
            if (wait > 0.0005 and self._stopping.wait(wait)) or self._stopping.is_set():
                self.settler.requeue([c.delivery for c in ready[i:]])
                return
            self.pool.submit(self.run, call)

    def _take_in(self, deliveries: list[Delivery]) -> list[CallContext]:
        """Count fetched deliveries as in flight; the calls ready to run now."""
        self.last_delivery = time.monotonic()
        with self._lock:
            self._unacked += len(deliveries)
            self._counts["received"] += len(deliveries)
        return [call for call in map(self._prepare, deliveries) if call is not None]

    def _prepare(self, delivery: Delivery) -> CallContext | None:
        """Decode and admit; the call ready to run, or None if it was handled here."""
        try:
            kwargs, meta = decode(delivery.body)
            problem = self.task._check_kwargs(kwargs)
            if problem:
                raise MalformedMessage(problem)
        except MalformedMessage as exc:
            self.malformed(delivery, exc)
            return None
        call = CallContext(self, delivery, kwargs, meta)
        if self._admit_all or not self._admit_keys.isdisjoint(meta):
            return call if self.admit(call) else None
        return call

    def admit(self, call: CallContext) -> bool:
        """Ask the controls; True if the call may run now."""
        for control in self.controls.admit:  # type: ignore[attr-defined]
            verdict = control.admit(call)
            if verdict is None:
                continue
            if isinstance(verdict, Hold):
                self._hold(call, verdict.until)
            else:
                self.verdict(call, verdict)
            return False
        return True

    def _wait_step(self) -> float:
        """How long the dispatcher may block: short while the pool has waiting work to watch."""
        if self.pool.pending > self.pool.idle:
            return self.pool.grow_after
        due_in = self._held.next_in()
        if due_in is None:
            return self.fetch_timeout
        return max(0.0, min(self.fetch_timeout, due_in))

    # --- monitor: heartbeats, control ticks, plugins registered later ---------------------------

    def _monitor_loop(self) -> None:
        interval = max(0.05, self.conn.heartbeat_interval)
        tickers = self.controls.tickers
        step = min([interval, MONITOR_STEP] + [c.tick_every for c, _ in tickers])
        next_beat = time.monotonic() + interval
        while not self._stopping.wait(step):
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + interval
                self._heartbeat()
            for entry in tickers:
                if now >= entry[1]:
                    entry[1] = now + entry[0].tick_every
                    safely(f"{entry[0].name}.tick", entry[0].tick, now)
            if self.plugins_seen != plugins.generation():
                self.refresh_hooks()

    def _heartbeat(self) -> None:
        try:
            recovered = self.conn.heartbeat()
            if recovered:
                log.warning("recovered %d message(s) of dead consumers on %s", recovered, self.conn.url)
        except Exception as exc:  # noqa: BLE001
            log.warning("heartbeat to %s failed: %s: %s", self.conn.url, type(exc).__name__, exc)
            return
        self.call_hook("callq_heartbeat_seen", consumer=self, recovered=recovered)

def _check_mode(task: Task[Any, Any], is_async: bool) -> None:
    mode = task.options.mode
    if mode == "asyncio" and not is_async:
        raise ConfigError(f"{task.name}: mode='asyncio' needs an async def function")
    if is_async and mode not in ("asyncio", "threads"):
        raise ConfigError(f"{task.name}: an async def function runs in mode='asyncio', not {mode!r}")
    if mode in ("gevent", "eventlet"):
        _check_green(mode)


def _check_green(mode: str) -> None:
    try:
        if mode == "gevent":
            from gevent import monkey

            patched = monkey.is_module_patched("threading")
        else:
            import eventlet.patcher

            patched = eventlet.patcher.is_monkey_patched("thread")
    except ImportError:
        raise ConfigError(f"mode={mode!r} needs {mode} installed: pip install {mode}") from None
    if not patched:
        first = ("from gevent import monkey; monkey.patch_all()" if mode == "gevent"
                 else "import eventlet; eventlet.monkey_patch()")
        raise ConfigError(f"mode={mode!r}: call `{first}` at the very top of your program, before other imports")
