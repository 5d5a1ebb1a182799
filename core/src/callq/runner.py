"""The worker: fetch loop, controls, elastic pool, outcomes. Broker-agnostic.

Threads per consumer: a dispatcher (fetch, decode, controls, rate gate, hand to the pool),
an acker (batched acks/requeues), a heartbeat, and the elastic pool's workers.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import random
import signal
import socket
import threading
import time
import traceback
from time import perf_counter
from collections import deque

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .broker import Connection, Delivery, connect
from .errors import Reject, Requeue, Retry
from .message import MalformedMessage, decode, dumps, encode, raw_for_dead_letter
from .pool import ElasticPool

if TYPE_CHECKING:
    from .task import Task

log = logging.getLogger("callq.worker")

FETCH_TIMEOUT = 1.0
ACK_INTERVAL = 0.02
CHUNK_SECONDS = 0.002  # work per pool hand-off when calls are very fast
MAX_HELD = 1000
_HOST = socket.gethostname()


class CallContext:
    """The call being run: available inside the function through :func:`callq.current`."""

    __slots__ = ("task", "queue", "kwargs", "meta", "delivery", "outcome", "error", "result",
                 "started_at", "finished_at", "consumer")

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
        self.pool = ElasticPool(opts.concurrency, opts.keepalive, name=f"callq-{opts.queue}")
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
        self._threads: list[threading.Thread] = []
        self._counts = dict.fromkeys(("received", "failed", "retried", "requeued", "dead", "malformed"), 0)
        self._done = itertools.count()  # next() is atomic: the hot path takes no lock
        self._started_at = 0.0
        self._next_slot = 0.0
        self._interval = 1.0 / opts.qps if opts.qps else 0.0
        self._latency = 1.0  # moving average of call duration (s); unknown = slow

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Consumer:
        self._started_at = time.monotonic()
        with _running_lock:
            _running.add(self)
        self._hook.callq_consumer_started(consumer=self)
        for target, name in ((self._dispatch_loop, "dispatch"), (self._ack_loop, "ack"),
                             (self._heartbeat_loop, "heartbeat")):
            t = threading.Thread(target=target, name=f"callq-{self.queue}-{name}", daemon=name != "dispatch")
            t.start()
            self._threads.append(t)
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

    def stats(self) -> Stats:
        c = self._counts
        return Stats(received=c["received"], done=_count_value(self._done), failed=c["failed"], retried=c["retried"],
                     requeued=c["requeued"], dead=c["dead"], malformed=c["malformed"],
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
        eta = meta.get("eta")
        if eta is not None:
            wait = float(eta) - time.time()
            if wait > 0.002:
                self._hold(ctx, wait)
                return None
        return ctx

    def _submit_chunks(self, ready: list[CallContext]) -> None:
        """Hand calls to the pool; very fast calls go in chunks so threads hand off less often."""
        if not ready:
            return
        size = min(len(ready), max(1, int(CHUNK_SECONDS / max(self._latency, 1e-7))))
        if size == 1:
            for ctx in ready:
                self.pool.submit(self._execute, ctx)
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
            if slot < now - self._interval:
                slot = now
            self._next_slot = slot + self._interval
            wait = slot - now
            if wait > 0.0005 and self._stopping.wait(wait):
                self._requeue_many([ctx.delivery])
                return
        self.pool.submit(self._execute, ctx)

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
            self._submit(ctx)

    # --- running a call ------------------------------------------------------------------------

    def _execute(self, ctx: CallContext) -> None:
        if self._stopping.is_set():
            self._requeue_many([ctx.delivery])
            return
        _local.call = ctx
        ctx.started_at = time.time()
        if self._call_hooks:
            self._hook.callq_before_call(call=ctx)
        try:
            started = perf_counter()
            ctx.result = self.task.fn(**ctx.kwargs)
            self._latency = self._latency * 0.9 + (perf_counter() - started) * 0.1
            ctx.outcome = "done"
            if not self._call_hooks:  # fast path
                _local.call = None
                self._ack(ctx.delivery)
                next(self._done)
                return
        except Requeue as exc:
            ctx.outcome = "requeue"
            ctx.error = exc
        except Reject as exc:
            ctx.outcome = "dead"
            ctx.error = exc
        except BaseException as exc:  # noqa: BLE001 - any failure of user code is an outcome
            ctx.error = exc
            ctx.outcome = "retry" if ctx.attempt < self.options.max_retries else "dead"
        finally:
            _local.call = None
            ctx.finished_at = time.time()
        try:
            self._settle(ctx)
        except Exception:  # noqa: BLE001
            log.exception("could not settle %r; it stays unacked and will be redelivered", ctx)
        if self._call_hooks:
            try:
                self._hook.callq_after_call(call=ctx)
            except Exception:  # noqa: BLE001
                log.exception("callq_after_call hook failed for %r", ctx)

    def _settle(self, ctx: CallContext) -> None:
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
                log.warning("ack of %d message(s) failed (%s); retrying", len(acks), exc)
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
                    log.warning("requeue of %d message(s) failed (%s); retrying", len(ds), exc)
                    self._to_requeue.extend((d, delay) for d in ds)
        if done:
            with self._lock:
                self._unacked -= done
                self._lock.notify_all()
        return done

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

    def _heartbeat_loop(self) -> None:
        interval = max(0.05, self.conn.heartbeat_interval)
        while not self._stopping.wait(interval):
            try:
                recovered = self.conn.heartbeat()
                if recovered:
                    log.warning("recovered %d message(s) of dead consumers on %s", recovered, self.conn.url)
                self._hook.callq_heartbeat_seen(consumer=self, recovered=recovered)
            except Exception as exc:  # noqa: BLE001
                log.warning("heartbeat to %s failed: %s: %s", self.conn.url, type(exc).__name__, exc)

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
            with _running_lock:
                _running.discard(self)
                _running_lock.notify_all()
            s = self.stats()
            log.info("stopped %s: %d done, %d retried, %d dead-lettered in %.1fs",
                     self.queue, s.done, s.retried, s.dead, s.elapsed)


def _count_value(counter: itertools.count[int]) -> int:
    """Current value of an itertools.count without advancing it."""
    return int(repr(counter)[6:-1])


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
    _signals_installed = True


def _on_signal(signum: int, frame: Any) -> None:
    with _running_lock:
        consumers = list(_running)
    if not consumers or all(c._stopping.is_set() for c in consumers):
        # second signal: give up on graceful stop
        prev = _previous_handlers.get(signum, signal.SIG_DFL)
        if callable(prev):
            prev(signum, frame)
        raise SystemExit(128 + signum)
    log.info("signal %d: stopping %d consumer(s) gracefully", signum, len(consumers))
    for c in consumers:
        c.stop()


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


