"""The worker: fetch loop, controls, elastic pool, outcomes. Broker-agnostic.

Threads per consumer: a dispatcher (fetch, decode, controls, rate gate, hand to the pool),
an acker (batched acks/requeues), a heartbeat, and the elastic pool's workers.
"""

from __future__ import annotations

import asyncio
import ctypes
import datetime as dt
import hashlib
import heapq
import inspect
import itertools
import logging
import os
import random
import signal
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

from .broker import Connection, Delivery, connect
from .errors import ConfigError, Reject, Requeue, Retry
from .message import MalformedMessage, decode, dumps, encode, raw_for_dead_letter
from .options import in_blackout
from .pool import AsyncioPool, ElasticPool
from .state import StateStore

if TYPE_CHECKING:
    from .task import Task

log = logging.getLogger("callq.worker")

FETCH_TIMEOUT = 1.0
MONITOR_STEP = 0.5
MAX_SETTLE_FAILURES = 8
CATCH_UP = 0.05  # a rate gate running late by less than this catches up (no lost starts)
STATE_STEP = 1.0  # seconds between reads of the pause flag and consumer counts
ACK_INTERVAL = 0.02
CHUNK_SECONDS = 0.002  # work per pool hand-off when calls are very fast
CHUNK_BELOW = 0.00002  # calls shorter than this (no I/O worth overlapping) go in chunks
MAX_HELD = 1000
_HOST = socket.gethostname()


class CallContext:
    """The call being run: available inside the function through :func:`callq.current`."""

    __slots__ = ("task", "queue", "kwargs", "meta", "delivery", "outcome", "error", "result",
                 "started_at", "finished_at", "consumer", "dedup_key", "settled", "thread_id")

    def __init__(self, consumer: Consumer, delivery: Delivery, kwargs: dict[str, Any], meta: dict[str, Any]):
        self.consumer = consumer
        self.task = consumer.task
        self.queue = delivery.queue
        self.delivery = delivery
        self.kwargs = kwargs
        self.meta = meta
        self.outcome: str | None = None
        self.error: BaseException | None = None
        self.result: Any = None
        self.started_at = 0.0
        self.finished_at = 0.0
        self.dedup_key: str | None = None
        self.settled = False
        self.thread_id = 0

    @property
    def id(self) -> str | None:
        return self.meta.get("id")

    @property
    def attempt(self) -> int:
        """0 for the first run, 1 for the first retry, ..."""
        return int(self.meta.get("attempt", 0) or 0)

    def __repr__(self) -> str:
        return f"<call {self.task.name} id={self.id} attempt={self.attempt} outcome={self.outcome}>"


_local = threading.local()


def current() -> CallContext | None:
    """The call running in this thread, or None outside a task."""
    return getattr(_local, "call", None)


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


_running: set[Consumer] = set()
_running_lock = threading.Condition()


class Consumer:
    """Consumes one task's queue in this process."""

    def __init__(self, task: Task[Any, Any]) -> None:
        self.task = task
        self.options = opts = task.options
        self.queue = opts.queue
        self.conn: Connection = connect(opts.broker)
        self.caps = self.conn.capabilities
        self.is_async = inspect.iscoroutinefunction(task.fn)
        if opts.mode == "asyncio" and not self.is_async:
            raise ConfigError(f"{task.name}: mode='asyncio' needs an async def function")
        if self.is_async and opts.mode != "asyncio" and opts.mode != "threads":
            raise ConfigError(f"{task.name}: an async def function runs in mode='asyncio', not {opts.mode!r}")
        if opts.mode in ("gevent", "eventlet"):
            _check_green(opts.mode)
        self.pool: ElasticPool | AsyncioPool
        if self.is_async:
            self.pool = AsyncioPool(opts.concurrency, name=f"callq-{opts.queue}")
            self._run: Callable[[Any], Any] = self._execute_async
        else:
            self.pool = ElasticPool(opts.concurrency, opts.keepalive, name=f"callq-{opts.queue}")
            self._run = self._execute
        self.limit = opts.prefetch_limit
        self.consumer_id = f"{_HOST}:{os.getpid()}:{id(self):x}"
        hook = self.conn.hook
        self._hook = hook
        self._call_hooks = bool(hook.callq_before_call.get_hookimpls() or hook.callq_after_call.get_hookimpls())
        self._lock = threading.Condition()
        self._unacked = 0
        self._held: list[tuple[float, int, CallContext]] = []
        self._held_seq = 0
        self._to_ack: deque[Delivery] = deque()
        self._to_requeue: deque[tuple[Delivery, float]] = deque()
        self._acker_wake = threading.Event()
        self._dispatcher_waiting = False
        self._refill_at = max(1, self.limit // 2)
        self._acker_idle = False
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._counts = dict.fromkeys(("received", "failed", "retried", "requeued", "dead", "malformed",
                                      "expired", "skipped", "timed_out"), 0)
        self._done = itertools.count()  # next() is atomic: the hot path takes no lock
        self._started_at = 0.0
        self._next_slot = 0.0
        self._interval = 1.0 / opts.qps if opts.qps else 0.0
        self._latency = 1.0  # moving average of call duration (s); unknown = slow
        self._fast = not (self._call_hooks or opts.dedup or opts.timeout)
        self._tz = ZoneInfo(opts.timezone) if opts.timezone else None
        self._paused = False
        self._gate_logged: str | None = None
        self._state_store: StateStore | None = None
        self._watch: list[tuple[float, int, CallContext]] = []
        self._watch_seq = 0
        self._consumers_key = f"callq:consumers:{self.queue}:"
        if opts.dedup or opts.distributed_qps:
            _ = self.state  # fail now, not in the middle of a run, if there is no shared store

    @property
    def state(self) -> StateStore:
        if self._state_store is None:
            self._state_store = connect(self.options.state).state if self.options.state else self.conn.state
        return self._state_store

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Consumer:
        self._started_at = time.monotonic()
        self._refresh_shared()  # a paused queue must not deliver even one message
        register_running(self)
        self._hook.callq_consumer_started(consumer=self)
        loops = [(self._dispatch_loop, "dispatch"), (self._ack_loop, "ack"), (self._monitor_loop, "monitor")]
        if self.options.timeout and not self.is_async:
            loops.append((self._watchdog_loop, "watchdog"))
        for target, name in loops:
            threading.Thread(target=target, name=f"callq-{self.queue}-{name}", daemon=name != "dispatch").start()
        log.info("consuming %s from %s (concurrency %d%s)", self.queue, self.conn.url,
                 self.options.concurrency, f", qps {self.options.qps}" if self.options.qps else "")
        return self

    def stop(self) -> None:
        """Stop fetching; running calls finish, waiting ones go back to the queue."""
        self._stopping.set()
        self._acker_wake.set()
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

    def stats(self) -> Stats:
        c = self._counts
        return Stats(received=c["received"], done=_count_value(self._done), failed=c["failed"], retried=c["retried"],
                     requeued=c["requeued"], dead=c["dead"], malformed=c["malformed"], expired=c["expired"],
                     skipped=c["skipped"], timed_out=c["timed_out"],
                     running=self.pool.busy, threads=self.pool.threads,
                     elapsed=(time.monotonic() - self._started_at) if self._started_at else 0.0)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    # --- dispatcher ----------------------------------------------------------------------------

    def _capacity(self) -> int:
        while not self._stopping.is_set():
            if self._to_ack or self._to_requeue:
                self._flush()
            with self._lock:
                free = self.limit - (self._unacked - len(self._held))
                if free > 0 and len(self._held) < MAX_HELD:
                    return free
                self._dispatcher_waiting = True
                if not self._to_ack:
                    self._lock.wait(self._wait_step())
                self._dispatcher_waiting = False
            self._release_due()
            self.pool.grow_if_starved()
        return 0

    def _dispatch_loop(self) -> None:
        backoff = 0.5
        idle_since: float | None = None
        stop_when_idle = self.options.stop_when_idle
        try:
            while not self._stopping.is_set():
                self._release_due()
                if self._gate_closed():
                    continue
                free = self._capacity()
                if free <= 0:
                    break
                if self._interval:
                    free = min(free, max(1, int(1.0 / self._interval) + 1))
                try:
                    step = self._wait_step()
                    if stop_when_idle is not None:
                        step = min(step, max(0.05, stop_when_idle / 2))
                    deliveries = self.conn.fetch(self.queue, free, step)
                    backoff = 0.5
                except Exception as exc:  # noqa: BLE001 - the broker reconnects; we keep going
                    log.warning("fetch from %s failed (%s: %s); retrying in %.1fs",
                                self.queue, type(exc).__name__, exc, backoff)
                    self._stopping.wait(backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
                if not deliveries:
                    self.pool.grow_if_starved()
                    if stop_when_idle is not None:
                        idle_since = self._check_idle(idle_since, stop_when_idle)
                    continue
                idle_since = None
                with self._lock:
                    self._unacked += len(deliveries)
                    self._counts["received"] += len(deliveries)
                ready = [ctx for ctx in map(self._prepare, deliveries) if ctx is not None]
                if self._interval:
                    for i, ctx in enumerate(ready):
                        if self._stopping.is_set():
                            self._requeue_many([c.delivery for c in ready[i:]])
                            break
                        self._submit(ctx)
                else:
                    self._submit_chunks(ready)
        except BaseException:  # noqa: BLE001
            log.exception("dispatcher of %s crashed; stopping this consumer", self.queue)
        finally:
            self._shutdown()

    def _gate_closed(self) -> bool:
        """Paused or inside a blackout window: fetch nothing, wait a little."""
        reason = None
        if self._paused:
            reason = "paused"
        elif self.options.blackout:
            now = dt.datetime.now(self._tz) if self._tz else dt.datetime.now()
            until = in_blackout(self.options.blackout, now)
            if until is not None:
                reason = f"in a blackout window until {until:%H:%M}"
        if reason is None:
            if self._gate_logged:
                log.info("%s: %s ended; consuming again", self.queue, self._gate_logged)
                self._gate_logged = None
            return False
        if self._gate_logged != reason:
            log.info("%s: %s; messages wait on the queue", self.queue, reason)
            self._gate_logged = reason
        self._flush()
        self._stopping.wait(0.5)
        return True

    def _check_idle(self, idle_since: float | None, limit: float) -> float | None:
        with self._lock:
            busy = self._unacked > 0
        if busy:
            return None
        now = time.monotonic()
        if idle_since is None:
            return now
        if now - idle_since >= limit:
            try:
                empty = self.conn.size(self.queue) == 0
            except Exception:  # noqa: BLE001
                empty = False
            if empty:
                log.info("queue %s stayed empty for %.1fs; stopping", self.queue, limit)
                self.stop()
            else:
                return now
        return idle_since

    def _prepare(self, delivery: Delivery) -> CallContext | None:
        """Decode and apply the controls; the call ready to run, or None if handled here."""
        try:
            kwargs, meta = decode(delivery.body)
            problem = self.task._check_kwargs(kwargs)
            if problem:
                raise MalformedMessage(problem)
        except MalformedMessage as exc:
            self._count("malformed")
            self._dead_letter_raw(delivery, str(exc))
            return None
        ctx = CallContext(self, delivery, kwargs, meta)
        opts = self.options
        now = time.time()
        expires_at = meta.get("expires_at")
        if expires_at is None and opts.expires is not None and "published_at" in meta:
            expires_at = float(meta["published_at"]) + opts.expires
        if expires_at is not None and now > float(expires_at):
            self._drop(ctx, "expired", f"expired {now - float(expires_at):.1f}s ago")
            return None
        eta = meta.get("eta")
        if eta is not None:
            wait = float(eta) - now
            if wait > 0.002:
                self._hold(ctx, wait)
                return None
            if opts.misfire_grace is not None and -wait > opts.misfire_grace:
                self._drop(ctx, "expired", f"misfired: due {-wait:.1f}s ago, grace {opts.misfire_grace}s")
                return None
        if opts.dedup:
            ctx.dedup_key = self._dedup_key(kwargs)
        return ctx

    def _already_done(self, ctx: CallContext) -> bool:
        """Dedup: the same arguments succeeded before (checked right before the call runs)."""
        try:
            seen = self.state.get(ctx.dedup_key) is not None  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - run it rather than lose it
            log.warning("dedup lookup failed (%s); running the call", exc)
            return False
        if seen:
            self._count("skipped")
            log.info("%s: skipped %s, the same arguments already succeeded", self.queue, ctx.id)
            self._ack(ctx.delivery)
        return seen

    def _dedup_key(self, kwargs: dict[str, Any]) -> str:
        canonical = dumps(dict(sorted(kwargs.items())))
        return f"callq:dedup:{self.queue}:{hashlib.sha256(canonical).hexdigest()}"

    def _drop(self, ctx: CallContext, kind: str, why: str) -> None:
        self._count(kind)
        if self.options.expired_to_dlq:
            log.warning("%s: %s %s; dead-lettered", self.queue, ctx.id, why)
            self._dead_letter(ctx, why)
        else:
            log.warning("%s: dropped %s: %s", self.queue, ctx.id, why)
            self._ack(ctx.delivery)

    def _submit_chunks(self, ready: list[CallContext]) -> None:
        """Hand calls to the pool; very fast calls go in chunks so threads hand off less often."""
        if not ready:
            return
        size = 1
        if self._latency < CHUNK_BELOW:  # calls too short to gain from overlapping: chunk them
            size = min(len(ready), int(CHUNK_SECONDS / max(self._latency, 1e-7)))
        if size <= 1 or self.is_async or not self._fast:
            for ctx in ready:
                self.pool.submit(self._run, ctx)
            return
        for i in range(0, len(ready), size):
            self.pool.submit(self._execute_chunk, ready[i:i + size])

    def _execute_chunk(self, chunk: list[CallContext]) -> None:
        for ctx in chunk:
            self._execute(ctx)

    def _submit(self, ctx: CallContext) -> None:
        if self._interval:
            now = time.monotonic()
            slot = self._next_slot
            if slot < now - max(self._interval, CATCH_UP):
                slot = now  # idle or far behind: start afresh rather than burst
            self._next_slot = slot + self._interval
            wait = slot - now
            if wait > 0.0005 and self._stopping.wait(wait):
                self._requeue_many([ctx.delivery])
                return
        self.pool.submit(self._run, ctx)

    # --- local holds (eta on brokers without native delay) -----------------------------------

    def _hold(self, ctx: CallContext, wait: float) -> None:
        with self._lock:
            self._held_seq += 1
            heapq.heappush(self._held, (time.monotonic() + wait, self._held_seq, ctx))
            self._lock.notify_all()

    def _wait_step(self) -> float:
        """How long the dispatcher may block: short while the pool has waiting work to watch."""
        if self.pool.pending > self.pool.idle:
            return self.pool.grow_after
        return self._held_wait()

    def _held_wait(self) -> float:
        held = self._held
        if not held:
            return FETCH_TIMEOUT
        return max(0.0, min(FETCH_TIMEOUT, held[0][0] - time.monotonic()))

    def _release_due(self) -> None:
        due: list[CallContext] = []
        with self._lock:
            now = time.monotonic()
            while self._held and self._held[0][0] <= now:
                due.append(heapq.heappop(self._held)[2])
        for ctx in due:
            opts = self.options
            late = time.time() - float(ctx.meta.get("eta", 0) or 0)
            if opts.misfire_grace is not None and late > opts.misfire_grace:
                self._drop(ctx, "expired", f"misfired: due {late:.1f}s ago, grace {opts.misfire_grace}s")
                continue
            self._submit(ctx)

    # --- running a call ------------------------------------------------------------------------

    def _execute(self, ctx: CallContext) -> None:
        if self._stopping.is_set():
            self._requeue_many([ctx.delivery])
            return
        if ctx.dedup_key is not None and self._already_done(ctx):
            return
        _local.call = ctx
        ctx.started_at = time.time()
        try:
            if self._call_hooks:
                self._hook.callq_before_call(call=ctx)
            timeout = self.options.timeout
            if timeout:
                self._watch_call(ctx, timeout)
            try:
                started = perf_counter()
                ctx.result = self.task.fn(**ctx.kwargs)
                self._latency = self._latency * 0.9 + (perf_counter() - started) * 0.1
                ctx.outcome = "done"
                if self._fast:
                    _local.call = None
                    self._ack(ctx.delivery)
                    next(self._done)
                    return
            except CallTimeout:
                pass  # the watchdog settled this call already
            except BaseException as exc:  # noqa: BLE001 - any failure of user code is an outcome
                self._classify(ctx, exc)
            finally:
                _local.call = None
                ctx.finished_at = time.time()
            if timeout and not self._claim(ctx):
                return  # abandoned after its timeout; the watchdog settled it
            self._finish(ctx)
        except CallTimeout:
            pass  # a late timeout signal after the call ended on its own

    def _classify(self, ctx: CallContext, exc: BaseException) -> None:
        ctx.error = exc
        if isinstance(exc, Requeue):
            ctx.outcome = "requeue"
        elif isinstance(exc, Reject):
            ctx.outcome = "dead"
        else:
            ctx.outcome = "retry" if ctx.attempt < self.options.max_retries else "dead"

    def _claim(self, ctx: CallContext) -> bool:
        """The first of the call's thread and the watchdog to claim a call settles it."""
        with self._lock:
            if ctx.settled:
                return False
            ctx.settled = True
            return True

    def _finish(self, ctx: CallContext) -> None:
        try:
            if ctx.outcome == "done" and ctx.dedup_key is not None:
                self.state.put(ctx.dedup_key, ctx.id or "1", ttl=self.options.dedup_ttl)
            self._settle(ctx)
        except Exception:  # noqa: BLE001
            log.exception("could not settle %r; it stays unacked and will be redelivered", ctx)
        if self._call_hooks:
            try:
                self._hook.callq_after_call(call=ctx)
            except Exception:  # noqa: BLE001
                log.exception("callq_after_call hook failed for %r", ctx)

    async def _execute_async(self, ctx: CallContext) -> None:
        if self._stopping.is_set():
            self._requeue_many([ctx.delivery])
            return
        if ctx.dedup_key is not None and await asyncio.to_thread(self._already_done, ctx):
            return
        ctx.started_at = time.time()
        if self._call_hooks:
            self._hook.callq_before_call(call=ctx)
        timeout = self.options.timeout
        try:
            coro = self.task.fn(**ctx.kwargs)
            ctx.result = await (asyncio.wait_for(coro, timeout) if timeout else coro)
            ctx.outcome = "done"
        except asyncio.TimeoutError:
            self._count("timed_out")
            self._classify(ctx, TimeoutError(f"call exceeded its timeout of {timeout}s and was cancelled"))
        except BaseException as exc:  # noqa: BLE001
            if isinstance(exc, asyncio.CancelledError) and self._stopping.is_set():
                self._requeue_many([ctx.delivery])
                return
            self._classify(ctx, exc)
        ctx.finished_at = time.time()
        if ctx.outcome == "done" and ctx.dedup_key is None and not self._call_hooks:
            self._ack(ctx.delivery)
            next(self._done)
            return
        await asyncio.get_running_loop().run_in_executor(None, self._finish, ctx)

    # --- timeouts (threads) ------------------------------------------------------------------

    def _watch_call(self, ctx: CallContext, timeout: float) -> None:
        ctx.thread_id = threading.get_ident()
        with self._lock:
            self._watch_seq += 1
            heapq.heappush(self._watch, (time.monotonic() + timeout, self._watch_seq, ctx))

    def _watchdog_loop(self) -> None:
        timeout = self.options.timeout or 0.0
        while not self._stopped.is_set():
            expired: list[CallContext] = []
            with self._lock:
                now = time.monotonic()
                while self._watch and (self._watch[0][2].settled or self._watch[0][0] <= now):
                    _, _, ctx = heapq.heappop(self._watch)
                    if not ctx.settled:
                        ctx.settled = True
                        expired.append(ctx)
                wait = min(0.05, self._watch[0][0] - now) if self._watch else 0.05
                if len(self._watch) > 1000:  # drop entries of calls that ended on their own
                    self._watch = [w for w in self._watch if not w[2].settled]
                    heapq.heapify(self._watch)
            for ctx in expired:
                self._count("timed_out")
                log.warning("%s: call %s exceeded its timeout of %ss; abandoned (its thread runs on "
                            "until the function returns)", self.queue, ctx.id, timeout)
                _raise_in_thread(ctx.thread_id)
                self._classify(ctx, TimeoutError(f"call exceeded its timeout of {timeout}s"))
                ctx.finished_at = time.time()
                self._finish(ctx)
            self._stopped.wait(max(wait, 0.005))

    def _settle(self, ctx: CallContext) -> None:
        """Ack, retry, requeue or dead-letter according to ``ctx.outcome``."""
        outcome = ctx.outcome
        if outcome == "done":
            self._ack(ctx.delivery)
            next(self._done)
            return
        exc = ctx.error
        if outcome == "requeue":
            assert isinstance(exc, Requeue)
            self._count("requeued")
            self._requeue_many([ctx.delivery], exc.delay)
            return
        self._count("failed")
        if outcome == "retry":
            delay = exc.delay if isinstance(exc, Retry) and exc.delay is not None else self._backoff(ctx.attempt)
            log.warning("%s failed (attempt %d/%d): %s: %s; retrying in %.2fs", self.task.name,
                        ctx.attempt + 1, self.options.max_retries + 1, type(exc).__name__, exc, delay)
            self._retry(ctx, delay)
            self._count("retried")
            return
        log.error("%s failed for good after %d attempt(s): %s: %s; dead-lettered to %s", self.task.name,
                  ctx.attempt + 1, type(exc).__name__, exc, self.options.dlq)
        self._dead_letter(ctx, "rejected" if isinstance(exc, Reject) else "retries exhausted")

    def _backoff(self, attempt: int) -> float:
        opts = self.options
        base = min(opts.retry_backoff * (2**attempt), opts.retry_backoff_max)
        return base * random.uniform(0.8, 1.2) if base else 0.0

    def _retry(self, ctx: CallContext, delay: float) -> None:
        meta = dict(ctx.meta)
        meta["attempt"] = ctx.attempt + 1
        meta["last_error"] = _error_text(ctx.error)
        native = self.caps.native_delay
        if delay > 0 and not native:
            meta["eta"] = time.time() + delay
        body = encode(ctx.kwargs, meta, where=self.task.name)
        self.conn.publish(self.queue, [body], delay=delay if native else 0.0)
        self._ack(ctx.delivery)

    def _dead_letter(self, ctx: CallContext, reason: str) -> None:
        meta = dict(ctx.meta)
        exc = ctx.error
        meta["dead"] = {
            "reason": reason,
            "queue": self.queue,
            "at": time.time(),
            "host": _HOST,
            "pid": os.getpid(),
            "error_type": type(exc).__name__ if exc else None,
            "error": str(exc) if exc else None,
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)) if exc else None,
        }
        payload = dict(ctx.kwargs)
        payload["_callq"] = meta
        self.conn.publish(self.options.dlq, [dumps(payload)])
        self._count("dead")
        self._ack(ctx.delivery)

    def _dead_letter_raw(self, delivery: Delivery, reason: str) -> None:
        log.error("malformed message on %s sent to %s: %s", self.queue, self.options.dlq, reason)
        meta = {"dead": {"reason": f"malformed: {reason}", "queue": self.queue, "at": time.time(),
                         "host": _HOST, "pid": os.getpid(), **raw_for_dead_letter(delivery.body)}}
        try:
            self.conn.publish(self.options.dlq, [dumps({"_callq": meta})])
        except Exception:  # noqa: BLE001
            log.exception("could not dead-letter a malformed message; it stays unacked")
            return
        self._count("dead")
        self._ack(delivery)

    # --- acks --------------------------------------------------------------------------------

    def _ack(self, delivery: Delivery) -> None:
        to_ack = self._to_ack
        to_ack.append(delivery)
        if self._dispatcher_waiting:
            # wake the dispatcher (once) when the pool is about to run dry or acks pile up
            if self.pool.pending == 0 or len(to_ack) >= self._refill_at:
                with self._lock:
                    if self._dispatcher_waiting:
                        self._dispatcher_waiting = False
                        self._lock.notify()
        elif self._acker_idle:
            self._acker_wake.set()

    def _requeue_many(self, deliveries: list[Delivery], delay: float = 0.0) -> None:
        if delay > 0 and not self.caps.native_delay:
            delay = 0.0  # without native delay the message is visible again at once
        self._to_requeue.extend((d, delay) for d in deliveries)
        self._acker_wake.set()

    def _flush(self) -> int:
        acks = _drain(self._to_ack)
        requeues = _drain(self._to_requeue)
        done = 0
        if acks:
            try:
                self.conn.ack(acks)
                done += len(acks)
            except Exception as exc:  # noqa: BLE001
                if self._give_up("ack", len(acks), exc):
                    done += len(acks)
                else:
                    self._to_ack.extend(acks)
        if requeues:
            by_delay: dict[float, list[Delivery]] = {}
            for d, delay in requeues:
                by_delay.setdefault(delay, []).append(d)
            for delay, ds in by_delay.items():
                try:
                    self.conn.requeue(ds, delay)
                    done += len(ds)
                except Exception as exc:  # noqa: BLE001
                    if self._give_up("requeue", len(ds), exc):
                        done += len(ds)
                    else:
                        self._to_requeue.extend((d, delay) for d in ds)
        if done:
            self._settle_failures = 0
            with self._lock:
                self._unacked -= done
                self._lock.notify_all()
        return done

    _settle_failures = 0

    def _give_up(self, what: str, n: int, exc: Exception) -> bool:
        """After repeated failures stop retrying: the broker redelivers those messages itself."""
        self._settle_failures += 1
        if self._settle_failures >= MAX_SETTLE_FAILURES:
            log.error("%s of %d message(s) failed %d times (%s: %s); giving up: the broker redelivers "
                      "them when their lease ends (a call may run twice)", what, n,
                      self._settle_failures, type(exc).__name__, exc)
            self._settle_failures = 0
            return True
        log.warning("%s of %d message(s) failed (%s: %s); retrying", what, n, type(exc).__name__, exc)
        time.sleep(min(0.05 * 2 ** self._settle_failures, 2.0))
        return False

    def _ack_loop(self) -> None:
        # The dispatcher flushes before each fetch; this thread bounds ack latency while it waits.
        while not self._stopped.is_set():
            if self._flush():
                time.sleep(ACK_INTERVAL)
                continue
            self._acker_idle = True
            if not self._to_ack:
                self._acker_wake.wait(0.25)
            self._acker_idle = False
            self._acker_wake.clear()
        self._flush()

    # --- heartbeat ---------------------------------------------------------------------------

    def _monitor_loop(self) -> None:
        """Heartbeats, pause flag, distributed-qps share and the periodic rate log."""
        opts = self.options
        interval = max(0.05, self.conn.heartbeat_interval)
        step = min(interval, MONITOR_STEP)
        next_beat = time.monotonic() + interval
        next_log = time.monotonic() + opts.rate_log_interval
        last_done = 0
        while not self._stopping.wait(step):
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + interval
                self._heartbeat()
            if now - self._last_state_check >= STATE_STEP:
                self._refresh_shared()
            if now >= next_log:
                next_log = now + opts.rate_log_interval
                last_done = self._log_rate(last_done)
        if opts.distributed_qps:
            try:
                self.state.delete(self._consumers_key + self.consumer_id)
            except Exception:  # noqa: BLE001
                pass

    _last_state_check = 0.0

    def _heartbeat(self) -> None:
        try:
            recovered = self.conn.heartbeat()
            if recovered:
                log.warning("recovered %d message(s) of dead consumers on %s", recovered, self.conn.url)
            self._hook.callq_heartbeat_seen(consumer=self, recovered=recovered)
        except Exception as exc:  # noqa: BLE001
            log.warning("heartbeat to %s failed: %s: %s", self.conn.url, type(exc).__name__, exc)

    def _refresh_shared(self) -> None:
        self._last_state_check = time.monotonic()
        opts = self.options
        try:
            if self._state_store is not None or self.conn.capabilities.shared_state or opts.state:
                self._paused = self.state.get(pause_key(self.queue)) is not None
            if opts.distributed_qps and opts.qps:
                self.state.put(self._consumers_key + self.consumer_id, str(time.time()), ttl=STATE_STEP * 5)
                live = max(1, len(self.state.scan(self._consumers_key)))
                self._interval = live / opts.qps
        except Exception as exc:  # noqa: BLE001
            log.warning("shared store of %s unreachable: %s: %s", self.queue, type(exc).__name__, exc)

    def _log_rate(self, last_done: int) -> int:
        done = _count_value(self._done)
        per_minute = (done - last_done) * 60.0 / self.options.rate_log_interval
        try:
            waiting = self.conn.size(self.queue)
        except Exception:  # noqa: BLE001
            waiting = -1
        if per_minute > 0 and waiting >= 0:
            eta = dt.timedelta(seconds=round(waiting / per_minute * 60))
            log.info("%s: %.0f calls/min, %d waiting, about %s to drain", self.queue, per_minute, waiting, eta)
        elif done != last_done or waiting > 0:
            log.info("%s: %.0f calls/min, %d waiting", self.queue, per_minute, waiting)
        return done

    # --- shutdown ----------------------------------------------------------------------------

    def _shutdown(self) -> None:
        with self._lock:
            held = [ctx.delivery for _, _, ctx in self._held]
            self._held.clear()
        if held:
            self._requeue_many(held)
        if not self.pool.wait_idle(self.options.shutdown_timeout):
            log.warning("%d call(s) of %s still running after %.0fs; their messages return after the lease",
                        self.pool.busy, self.queue, self.options.shutdown_timeout)
        self.pool.shutdown()
        deadline = time.monotonic() + 10
        while (self._to_ack or self._to_requeue) and time.monotonic() < deadline:
            self._flush() or time.sleep(0.05)
        self._stopped.set()
        self._acker_wake.set()
        try:
            self._hook.callq_consumer_stopped(consumer=self)
        finally:
            unregister_running(self)
            s = self.stats()
            log.info("stopped %s: %d done, %d retried, %d dead-lettered in %.1fs",
                     self.queue, s.done, s.retried, s.dead, s.elapsed)


def _count_value(counter: itertools.count[int]) -> int:
    """Current value of an itertools.count without advancing it."""
    return int(repr(counter)[6:-1])


class CallTimeout(TimeoutError):
    """Raised inside a thread whose call exceeded its timeout."""


def _raise_in_thread(thread_id: int) -> None:
    """Interrupt Python code running in that thread (not a blocking C call)."""
    if thread_id:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(CallTimeout))


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
        first = "from gevent import monkey; monkey.patch_all()" if mode == "gevent" else "import eventlet; eventlet.monkey_patch()"
        raise ConfigError(f"mode={mode!r}: call `{first}` at the very top of your program, before other imports")


def pause_key(queue: str) -> str:
    return f"callq:pause:{queue}"


def _drain(items: deque[Any]) -> list[Any]:
    out = []
    pop = items.popleft
    try:
        while True:
            out.append(pop())
    except IndexError:
        return out


def _error_text(exc: BaseException | None) -> str | None:
    return f"{type(exc).__name__}: {exc}" if exc else None


# --- process-level control ------------------------------------------------------------------

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
    if not _running or _signal_count >= 1:
        prev = _previous_handlers.get(signum, signal.SIG_DFL)
        if callable(prev):
            prev(signum, frame)
        raise SystemExit(128 + signum)
    _signal_count += 1


def _signal_watcher() -> None:
    global _signals_handled
    while True:
        time.sleep(0.05)
        if _signal_count > _signals_handled:
            _signals_handled = _signal_count
            consumers = running_consumers()
            log.info("signal: stopping %d consumer(s) gracefully (again to exit at once)", len(consumers))
            for c in consumers:
                c.stop()


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
    _signal_count = _signals_handled = 0
    _signals_installed = False


os.register_at_fork(after_in_child=_after_fork_in_child)


def running_consumers() -> list[Consumer]:
    with _running_lock:
        return list(_running)


def wait(timeout: float | None = None) -> bool:
    """Block until every consumer of this process has stopped (SIGINT/SIGTERM stop them).

    Returns False if ``timeout`` passed first.
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
    return True


def stop_all(wait_for: bool = True, timeout: float | None = None) -> None:
    for c in running_consumers():
        c.stop()
    if wait_for:
        wait(timeout)


