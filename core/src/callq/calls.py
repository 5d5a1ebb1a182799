"""Running calls: handing them to the pool (alone or in chunks), controls and plugin scopes
around each, and its outcome (acted on by :mod:`callq.outcomes`).

A mixin of :class:`callq.consumer.Consumer`. The hot path (no control or plugin needs a
phase around the call) runs the function and acks, nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from contextlib import AbstractContextManager
from time import monotonic, perf_counter, thread_time
from typing import TYPE_CHECKING, Any

from . import plugins
from .context import CallContext, set_current, set_current_async
from .controls import Verdict

if TYPE_CHECKING:
    from .consumer import Consumer

log = logging.getLogger("callq.worker")

CHUNK_BELOW = 0.002  # calls shorter than this go to the pool in chunks, one thread per chunk
HANDOFF = 0.00002  # what giving a call its own thread costs under the GIL (CPU, switches), about
PROBE_EVERY = 1.0  # seconds between trials of one lane while calls run on several
FIRST_WAIT = 0.02  # how long the first batch waits for its first call to measure the rest
DRAIN_WAIT = 0.05  # at most this long one lane waits for the pool's last chunks before running alone
MAX_LANES = 4  # calls needing more threads than this get one hand-off each (their waits dominate)


class _SchedStat:
    """This thread's CPU time and time spent waiting for a CPU (Linux schedstat), in seconds."""

    def __init__(self) -> None:
        try:
            self.fd: int | None = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            self.fd = None  # not Linux: CPU time only

    def read(self) -> tuple[float, float]:
        if self.fd is None:
            return thread_time(), 0.0
        fields = os.pread(self.fd, 64, 0).split()
        return int(fields[0]) / 1e9, int(fields[1]) / 1e9

    def __del__(self) -> None:  # the thread ended (threading.local drops it)
        if self.fd is not None:
            os.close(self.fd)


_local = threading.local()


def _sched() -> _SchedStat:
    try:
        return _local.sched  # type: ignore[no-any-return]
    except AttributeError:
        _local.sched = _SchedStat()
        return _local.sched  # type: ignore[no-any-return]


class CallRunner:
    """Runs calls for a consumer and settles what came of them."""

    def __init__(self: Consumer) -> None:  # type: ignore[misc]
        task = self.task
        self.fn = task.fn
        self._latency = 1.0  # moving average of call duration (s); unknown = slow
        self._lanes = task.options.concurrency  # threads short calls need at once (chunks)
        self._probe_at = 0.0  # next trial of one lane (monotonic)
        self._need = 1.0  # moving average of the threads short calls need
        self.run = self._execute_async if self.is_async else self._execute_one
        self.refresh_hooks()

    def refresh_hooks(self: Consumer) -> None:  # type: ignore[misc]
        """(Re)read which hooks have implementations: plugins registered later apply too."""
        self.plugins_seen = plugins.generation()
        hook = self.conn.hook
        self._before_hooks = bool(hook.callq_before_call.get_hookimpls())
        self._scope_hooks = bool(hook.callq_call_scope.get_hookimpls())
        self._after_hooks = bool(hook.callq_after_call.get_hookimpls())
        self._after_many_hooks = bool(hook.callq_after_calls.get_hookimpls())
        controls = self.controls
        self._watch_start = bool(controls.started_many)  # type: ignore[attr-defined]
        self._watch_settled = bool(controls.settled_many or self._after_many_hooks)  # type: ignore[attr-defined]
        self._scoped = [c for c in controls.all if c in controls.enter or c in controls.exit]  # type: ignore[attr-defined]
        self._fast = not (self._scoped or controls.settled or self._before_hooks  # type: ignore[attr-defined]
                          or self._scope_hooks or self._after_hooks)

    # --- handing calls to the pool -----------------------------------------------------------

    def submit_many(self: Consumer, ready: list[CallContext]) -> None:  # type: ignore[misc]
        """Hand calls to the pool: short ones in chunks on as few threads as keep up.

        A call shorter than CHUNK_BELOW (on the fast path) goes in a chunk, run in turn by one
        thread; the batch is split into ``_lanes`` chunks, the threads the calls need at once:
        Little's law with the CPU under the GIL as the server, wall time / (CPU time + HANDOFF),
        measured per chunk. One lane and an idle pool: the dispatcher runs the chunk itself.
        More than MAX_LANES: one call per hand-off (waiting dominates; chunks gain nothing).
        """
        if not ready:
            return
        latency = self._latency
        short = self._fast and not self.is_async and latency < CHUNK_BELOW
        limit = self._limits[short]
        if limit != self.limit:  # fetches take this from now on; a smaller one waits for acks
            self.limit, self._refill_at = limit, max(1, limit // 2)
        if short:
            lanes, pool = self._lanes, self.pool
            if lanes == 2 and self._siblings_allowed:
                if (now := monotonic()) < self._probe_at:
                    self._start_sibling()  # a second loop fetching and running its own batches
                    self._execute_inline(ready)
                    return
                self._probe_at = now + PROBE_EVERY
                lanes = self._lanes = 1  # the sibling ends after its batch: this one measures alone
            if lanes == 1:
                # alone, or it would measure the pool's last calls' GIL waits as its own (a
                # probe right after several lanes, the first call's observers still writing)
                if (pool.busy or pool.pending) and not pool.wait_idle(DRAIN_WAIT):
                    pool.submit(self._execute_chunk, ready)
                    return
                self._execute_inline(ready)  # one lane and it is free: no hand-off at all
                return
            if (now := monotonic()) >= self._probe_at:
                # on several threads, calls measure each other's GIL waits as waits: now and
                # then the next batch runs alone, once the pool drained
                self._probe_at = now + PROBE_EVERY
                self._lanes = 1
            if lanes <= MAX_LANES:
                submit = pool.submit
                size = max(1, len(ready) // lanes)  # at least ``lanes`` chunks
                for i in range(0, len(ready), size):
                    submit(self._execute_chunk, ready[i:i + size])
                return
        elif latency == 1.0 and self._fast and not self.is_async:
            # nothing measured yet: the first call, alone in a chunk, measures what calls need;
            # if it is short, the rest go by that (no thread started for each of them)
            self.pool.submit(self._execute_chunk, ready[:1])
            self.pool.wait_idle(FIRST_WAIT)  # its observers may still write: the measure is set
            if self._latency < 1.0:
                self.submit_many(ready[1:])
                return
            ready = ready[1:]
        submit, run = self.pool.submit, self.run
        for call in ready:
            submit(run, call)

    def _execute_inline(self: Consumer, chunk: list[CallContext]) -> None:  # type: ignore[misc]
        """Run a chunk in the dispatcher's thread, as the pool would (nothing escapes); the
        dispatcher flushes the acks itself before its next fetch."""
        settler = self.settler
        settler.quiet = True
        try:
            self._execute_chunk(chunk)
        except Exception:  # noqa: BLE001 - as the pool does: a task must never kill its thread
            log.exception("unexpected error running calls of %s", self.queue)
        finally:
            settler.quiet = False

    def _execute_chunk(self: Consumer, chunk: list[CallContext]) -> None:  # type: ignore[misc]
        if self._watch_start:
            self.started_many(chunk)
        # measures the calls only (observers' writes say nothing of their needs); two lanes measure
        # each other's GIL waits as waits, so while a sibling runs the probe decides, unmeasured
        sched = None if self.siblings else _sched()
        wall = perf_counter()
        if sched is not None:
            cpu, delay = sched.read()
        execute = self._execute
        done = [call for call in chunk if execute(call)]
        n = len(chunk)
        wall = (perf_counter() - wall) / n
        self._latency = wall
        if sched is not None and not self.siblings:
            cpu2, delay2 = sched.read()
            cpu = (cpu2 - cpu) / n
            wall -= (delay2 - delay) / n  # waiting for a CPU is no reason for another thread
            need = wall / (cpu + HANDOFF)
            if self._lanes == 1 and need >= 1:  # one lane measures cleanly; else smooth the noise
                need = self._need = self._need * 0.75 + need * 0.25
            else:
                self._need = need
            self._lanes = self._lanes_for(need, wall, cpu)
        if done and self._watch_settled:
            self.settled_many(done)

    # --- threads -----------------------------------------------------------------------------

    def _execute_one(self: Consumer, call: CallContext) -> None:  # type: ignore[misc]
        if self._watch_start:
            self.started_many([call])
        if self._execute(call) and self._watch_settled:
            self.settled_many([call])

    def _execute(self: Consumer, call: CallContext) -> bool:  # type: ignore[misc]
        """Run one call; True if it was done on the fast path (its observers not told yet)."""
        if self._stopping.is_set():
            self.settler.requeue([call.delivery])
            return False
        set_current(call)
        call.started_at = time.time()
        if not self._fast:
            self._run_scoped(call)
            return False
        try:
            started = perf_counter()
            call.result = self.fn(**call.kwargs)
            self._latency = self._latency * 0.9 + (perf_counter() - started) * 0.1
        except BaseException as exc:  # noqa: BLE001 - any failure of user code is an outcome
            set_current(None)
            call.finished_at = time.time()
            if call.claim():
                self.fail(call, exc)
            return False
        set_current(None)
        call.finished_at = time.time()
        call.outcome = "done"
        self.settler.ack(call.delivery)
        next(self._done)
        return True

    def _run_scoped(self: Consumer, call: CallContext) -> None:  # type: ignore[misc]
        error: BaseException | None = None
        entered = []
        scopes = self._open_scopes(call) if self._scope_hooks else ()
        try:
            self._enter(call, entered)
            started = perf_counter()
            call.result = self.fn(**call.kwargs)
            self._latency = self._latency * 0.9 + (perf_counter() - started) * 0.1
        except BaseException as exc:  # noqa: BLE001
            error = exc
        finally:
            error = self._leave(call, entered, scopes, error)
            set_current(None)
        self._conclude(call, error)

    def _enter(self: Consumer, call: CallContext, entered: list[Any]) -> None:  # type: ignore[misc]
        for control in self._scoped:
            control.enter(call)
            entered.append(control)  # only entered controls leave
        if self._before_hooks:
            self.call_hook("callq_before_call", call=call)

    def _leave(self: Consumer, call: CallContext, entered: list[Any], scopes: Any,  # type: ignore[misc]
               error: BaseException | None) -> BaseException | None:
        for control in reversed(entered):  # the timeout control (entered last) leaves first
            replaced = control.exit(call, error)
            if replaced is not None:
                error = replaced
        for scope in reversed(scopes):
            try:
                if error is None:
                    scope.__exit__(None, None, None)
                else:
                    scope.__exit__(type(error), error, error.__traceback__)
            except Exception:  # noqa: BLE001
                log.exception("plugin call scope %r failed on exit (ignored)", scope)
        call.finished_at = time.time()
        return error

    def _open_scopes(self: Consumer, call: CallContext) -> list[AbstractContextManager[Any]]:  # type: ignore[misc]
        opened = []
        try:
            scopes = self.conn.hook.callq_call_scope(call=call)
        except Exception:  # noqa: BLE001
            log.exception("callq_call_scope failed (ignored)")
            return opened
        for scope in scopes:
            if scope is None:
                continue
            try:
                scope.__enter__()
                opened.append(scope)
            except Exception:  # noqa: BLE001
                log.exception("plugin call scope %r failed on enter (ignored)", scope)
        return opened

    def _conclude(self: Consumer, call: CallContext, error: BaseException | None) -> None:  # type: ignore[misc]
        if not call.claim():
            return  # a control gave up on it (timeout) and settled it already
        if error is None:
            call.outcome = "done"
            self.finish(call)
        elif isinstance(error, Verdict):
            self.verdict(call, error)
        else:
            self.fail(call, error)

    # --- asyncio -----------------------------------------------------------------------------

    async def _execute_async(self: Consumer, call: CallContext) -> None:  # type: ignore[misc]
        if self._stopping.is_set():
            self.settler.requeue([call.delivery])
            return
        if self._watch_start:
            self.started_many([call])
        set_current_async(call)
        call.started_at = time.time()
        error: BaseException | None = None
        entered: list[Any] = []
        scopes = self._open_scopes(call) if self._scope_hooks else ()
        try:
            self._enter(call, entered)
            call.result = await self.fn(**call.kwargs)
        except BaseException as exc:  # noqa: BLE001
            error = exc
        error = self._leave(call, entered, scopes, error)
        if isinstance(error, asyncio.CancelledError) and self._stopping.is_set():
            if call.claim():
                self.settler.requeue([call.delivery])
            return
        if self._fast and error is None:
            call.outcome = "done"
            self.settler.ack(call.delivery)
            next(self._done)
            if self._watch_settled:
                self.settled_many([call])
            return
        await asyncio.get_running_loop().run_in_executor(None, self._conclude, call, error)
