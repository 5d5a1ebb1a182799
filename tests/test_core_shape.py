"""Controls added from outside core, hooks that see every outcome, and the defects found in
review (each test here failed before its fix)."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import threading
import time
import uuid
from collections import Counter

import pytest

import callq
from callq import hookimpl
from callq.broker import Capabilities
from callq.brokers.memory import MemoryBroker
from callq.controls import Control
from callq.controls.pause import pause_key
from callq.url import BrokerURL


def q() -> str:
    return f"shape-{uuid.uuid4().hex[:8]}"


def finish(task, timeout=30):
    task.consume()
    assert task._consumer.join(timeout), "consumer did not stop"
    return task.stats()


@contextlib.contextmanager
def plugin(obj, name=None):
    callq.register(obj, name=name or f"test-{uuid.uuid4().hex[:6]}")
    try:
        yield obj
    finally:
        callq.unregister(obj)


# --- a control from outside core ------------------------------------------------------------


class CircuitBreaker(Control):
    """Pauses its queue (for every consumer) after N consecutive failures."""

    name = "circuit_breaker"

    @dataclasses.dataclass(frozen=True)
    class Options:
        failures: int = 5

        def __post_init__(self):
            if self.failures < 1:
                raise ValueError("failures must be >= 1")

    @classmethod
    def applies(cls, task_options, options):
        return "circuit_breaker" in task_options.controls

    def start(self):
        self.in_a_row = 0

    def gate(self):
        return "circuit open" if self.in_a_row >= self.options.failures else None

    def settled(self, call):
        if call.outcome in ("retry", "dead"):
            self.in_a_row += 1
            if self.in_a_row == self.options.failures:  # every other consumer pauses too
                self.consumer.state.put(pause_key(self.consumer.queue), "circuit open")
        elif call.outcome == "done":
            self.in_a_row = 0


class BreakerPlugin:
    @hookimpl
    def callq_controls(self):
        return [CircuitBreaker]


def test_third_party_control_pauses_queue_after_failures(mem_url):
    with plugin(BreakerPlugin()):
        ran = []

        @callq.task(q(), broker=mem_url, max_retries=0, concurrency=1, prefetch_buffer=0,
                    controls={"circuit_breaker": {"failures": 3}})
        def shaky(n):
            ran.append(n)
            raise RuntimeError("down")

        shaky.push_many((i,) for i in range(10))
        shaky.consume()
        deadline = time.monotonic() + 10
        while not shaky.is_paused() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert shaky.is_paused()
        time.sleep(1.5)  # paused: nothing more runs
        assert len(ran) <= 4 and shaky.size() >= 6
        shaky.stop()
        assert "circuit_breaker" in shaky._consumer.controls.names()


def test_control_options_are_checked(mem_url):
    with plugin(BreakerPlugin()):
        with pytest.raises(callq.ConfigError, match="has no option 'failure'.*failures"):
            callq.task(q(), broker=mem_url, controls={"circuit_breaker": {"failure": 3}})(lambda: None)
        with pytest.raises(callq.ConfigError, match="failures must be >= 1"):
            callq.task(q(), broker=mem_url, controls={"circuit_breaker": {"failures": 0}})(lambda: None)
        with pytest.raises(callq.ConfigError, match="did you mean 'circuit_breaker'"):
            callq.task(q(), broker=mem_url, controls={"circuit_braker": {}})(lambda: None)
    with pytest.raises(callq.ConfigError, match="no control named 'circuit_breaker'"):
        callq.task(q(), broker=mem_url, controls={"circuit_breaker": {}})(lambda: None)


def test_builtin_controls_are_registered_like_plugins(mem_url):
    pm = callq.get_plugin_manager()
    assert pm.get_plugin("callq.default.controls") is not None

    @callq.task(q(), broker=mem_url, qps=5, timeout=1, dedup=True, stop_when_idle=0.2)
    def f():
        pass

    f.consume()
    names = f._consumer.controls.names()
    f.stop()
    assert {"expiry", "dedup", "pause", "delay", "rate", "timeout", "retry"} <= set(names)
    assert "blackout" not in names  # only what the task asks for


def test_unused_phases_are_not_called(mem_url):
    @callq.task(q(), broker=mem_url, stop_when_idle=0.2, results=False)  # results on would add a phase
    def f():
        pass

    f.consume()
    c = f._consumer
    f.stop()
    assert not c.controls.enter and not c.controls.settled and not c.controls.pace and c._fast


# --- hooks ------------------------------------------------------------------------------------


class Outcomes:
    def __init__(self):
        self.calls = []
        self.published = []

    @hookimpl
    def callq_after_call(self, call):
        self.calls.append((call.kwargs.get("n"), call.outcome, call.reason, call.stash.get("seen")))

    @hookimpl
    def callq_before_call(self, call):
        call.stash["seen"] = True

    @hookimpl
    def callq_after_publish(self, queue, ids, messages):
        self.published.append((queue, list(ids), [m["_callq"]["id"] for m in messages]))


def test_after_call_sees_every_outcome(mem_url):
    rec = Outcomes()
    with plugin(rec):
        name = q()

        @callq.task(name, broker=mem_url, dedup=True, max_retries=1, retry_backoff=0, stop_when_idle=0.5,
                    concurrency=1)
        def f(n):
            if n == 2:
                raise ValueError("always")
            if n == 3:
                raise callq.Reject("no")

        f.push(1)
        f.publish({"n": 4}, expires=0.01)
        time.sleep(0.05)
        f.push(2)
        f.push(3)
        conn = f.connection
        conn.publish(name, [b"not json", b'{"n": 5, "_callq": {"attempt": "x"}}'])
        finish(f)
        f.push(1)  # dedup: skipped
        finish(f)
    outcomes = Counter((n, o) for n, o, _, _ in rec.calls)
    assert outcomes[(1, "done")] == 1 and outcomes[(1, "skipped")] == 1
    assert outcomes[(4, "expired")] == 1
    assert outcomes[(2, "retry")] == 1 and outcomes[(2, "dead")] == 1
    assert outcomes[(3, "dead")] == 1
    assert outcomes[(None, "malformed")] == 2
    assert all(seen for n, o, _, seen in rec.calls if o in ("done", "retry"))
    reasons = {o: r for n, o, r, _ in rec.calls}
    assert "expired" in reasons["expired"] and "already succeeded" in reasons["skipped"]
    ids = [i for _, published_ids, _ in rec.published for i in published_ids]
    assert len(ids) == 5 and all(p == m for _, p, m in rec.published)


_trace: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace", default=None)


class TraceScope:
    @hookimpl
    def callq_call_scope(self, call):
        @contextlib.contextmanager
        def scope():
            token = _trace.set(f"span-{call.kwargs['n']}-{threading.get_ident()}")
            try:
                yield
            finally:
                _trace.reset(token)

        return scope()


@pytest.mark.parametrize("kind", ["thread", "asyncio"])
def test_call_scope_runs_in_the_calls_thread_or_task(mem_url, kind):
    seen = {}
    with plugin(TraceScope()):
        if kind == "thread":
            @callq.task(q(), broker=mem_url, stop_when_idle=0.3)
            def f(n):
                seen[n] = (_trace.get(), threading.get_ident(), callq.current().kwargs["n"])
        else:
            @callq.task(q(), broker=mem_url, stop_when_idle=0.3, mode="asyncio")
            async def f(n):
                seen[n] = (_trace.get(), threading.get_ident(), callq.current().kwargs["n"])

        f.push_many((i,) for i in range(20))
        finish(f)
    assert len(seen) == 20
    for n, (trace, ident, current_n) in seen.items():
        assert trace == f"span-{n}-{ident}" and current_n == n


class Misspelled:
    def callq_after_cal(self, call):
        pass


def test_misspelled_hook_is_an_error():
    with pytest.raises(callq.ConfigError, match="'callq_after_cal' is not a callq hook.*callq_after_call"):
        callq.register(Misspelled())


def test_plugin_registered_after_first_push_applies(mem_url):
    @callq.task(q(), broker=mem_url, stop_when_idle=0.3)
    def f(n):
        return n

    f.push(0)  # the connection is open now
    rec = Outcomes()
    with plugin(rec):
        f.push(1)
        finish(f)
    assert len(rec.published) == 1
    assert sorted(n for n, o, _, _ in rec.calls if o == "done") == [0, 1]


def test_plugin_registered_while_consuming_applies(mem_url):
    @callq.task(q(), broker=mem_url)
    def f(n):
        return n

    f.consume()
    try:
        rec = Outcomes()
        with plugin(rec):
            time.sleep(0.8)  # the consumer re-reads its hooks within about half a second
            f.push(7)
            deadline = time.monotonic() + 5
            while not rec.calls and time.monotonic() < deadline:
                time.sleep(0.05)
        assert rec.calls and rec.calls[0][:2] == (7, "done")
    finally:
        f.stop()


# --- defects ----------------------------------------------------------------------------------


class BrokenBeforeCall:
    @hookimpl
    def callq_before_call(self, call):
        raise RuntimeError("plugin bug")


def test_defect1_failing_before_call_hook_still_settles(mem_url):
    ran = []
    with plugin(BrokenBeforeCall()):
        @callq.task(q(), broker=mem_url, concurrency=2, prefetch_buffer=0, stop_when_idle=0.5)
        def f(n):
            ran.append(n)

        f.push_many((i,) for i in range(20))
        stats = finish(f, timeout=20)
    assert sorted(ran) == list(range(20)) and stats.done == 20
    assert f._consumer.in_flight == 0


class BrokenStart:
    @hookimpl
    def callq_consumer_started(self, consumer):
        raise RuntimeError("cannot start")


class Batches:
    def __init__(self):
        self.batches = []

    @hookimpl
    def callq_after_calls(self, calls):
        self.batches.append([(call.kwargs.get("n"), call.outcome) for call in calls])


def test_after_calls_sees_every_outcome_once_in_batches_and_keeps_the_fast_path(mem_url):
    rec = Batches()
    with plugin(rec):
        name = q()

        @callq.task(name, broker=mem_url, max_retries=1, retry_backoff=0, stop_when_idle=0.5, concurrency=4)
        def f(n):
            if n == -1:
                raise ValueError("always")
            return n

        f.push_many((i,) for i in range(2000))
        f.push(-1)
        f.connection.publish(name, [b"not json"])
        f.consume()
        fast = f._consumer._fast
        assert f._consumer.join(30)
    assert fast, "a recording plugin must not take calls off the fast path"
    seen = Counter(item for batch in rec.batches for item in batch)
    assert all(seen[(i, "done")] == 1 for i in range(2000)), "every call once"
    assert seen[(-1, "retry")] == 1 and seen[(-1, "dead")] == 1 and seen[(None, "malformed")] == 1
    assert sum(seen.values()) == 2003
    assert max(len(b) for b in rec.batches) > 1, "short calls come in batches"
    assert len(rec.batches) < 1000


def test_results_keep_the_fast_path_and_store_every_call(mem_url):
    @callq.task(q(), broker=mem_url, stop_when_idle=0.5, concurrency=4)
    def f(n):
        return n * 2

    handles = [f.push(i) for i in range(300)]
    f.consume()
    c = f._consumer
    assert "results" in c.controls.names() and c._fast
    assert not c.controls.enter and not c.controls.settled
    assert [h.result(timeout=30) for h in handles] == [i * 2 for i in range(300)]
    assert c.join(30)


def test_defect2_failing_start_hook_leaves_nothing_running(mem_url):
    @callq.task(q(), broker=mem_url)
    def f():
        pass

    with plugin(BrokenStart()), pytest.raises(RuntimeError, match="cannot start"):
        f.consume()
    assert f._consumer is None or not f._consumer.running
    assert not callq.running_consumers()
    assert callq.wait(timeout=2)


class SlowAfterCall:
    def __init__(self):
        self.outcomes = Counter()
        self.lock = threading.Lock()

    @hookimpl
    def callq_after_call(self, call):
        time.sleep(0.001)
        with self.lock:
            self.outcomes[(call.kwargs["slow"], call.outcome)] += 1


def test_defect3_timeout_never_hits_an_innocent_call(mem_url):
    # Slow calls end right around their timeout, so the watchdog often fires just as a thread
    # moves on to its next call: that next call must never receive the TimeoutError.
    hook = SlowAfterCall()
    calls = 3000
    with plugin(hook):
        @callq.task(q(), broker=mem_url, timeout=0.02, max_retries=0, concurrency=8, stop_when_idle=1.0)
        def f(i, slow):
            if slow:
                deadline = time.monotonic() + 0.015 + (i % 7) * 0.002
                while time.monotonic() < deadline:
                    time.sleep(0.001)

        f.push_many((i, i % 10 == 0) for i in range(calls))
        stats = finish(f, timeout=120)
    slow_dead = hook.outcomes[(True, "dead")]
    assert hook.outcomes[(False, "done")] == calls - calls // 10, hook.outcomes
    assert slow_dead + hook.outcomes[(True, "done")] == calls // 10, hook.outcomes
    assert sum(hook.outcomes.values()) == calls and slow_dead > 0
    assert stats.timed_out == slow_dead and f._consumer.in_flight == 0
    assert f.connection.size(f.options.dlq) == slow_dead


def test_defect4_failed_settle_releases_the_delivery(mem_url):
    name = q()

    @callq.task(name, broker=mem_url, max_retries=2, retry_backoff=0, concurrency=1, stop_when_idle=0.5)
    def f(x):
        raise ValueError("fails, and its retry cannot be encoded")

    f.connection.publish(name, [b'{"x": NaN}'])  # stdlib JSON reads NaN; callq never writes it
    stats = finish(f, timeout=10)
    assert stats.failed == 1 and f._consumer.in_flight == 0
    dead = f.connection.fetch(f.options.dlq, 10, 1)
    assert len(dead) == 1 and b"could not settle" in dead[0].body and b"NaN" in dead[0].body


class NoDelayMemory(MemoryBroker):
    capabilities = dataclasses.replace(MemoryBroker.capabilities, native_delay=False)


class NoDelayScheme:
    @hookimpl
    def callq_open_broker(self, url):
        if url.scheme == "nodelay":
            return NoDelayMemory(BrokerURL.parse(f"memory://{url.host}"))
        return None


def test_defect6_many_held_calls_do_not_stop_fetching():
    with plugin(NoDelayScheme()):
        url = f"nodelay://{uuid.uuid4().hex[:8]}"
        ran = []

        @callq.task(q(), broker=url, concurrency=4)
        def f(n):
            ran.append(n)

        for i in range(1500):
            f.publish({"n": -i}, countdown=600)
        f.push_many((i,) for i in range(10))
        f.consume()
        deadline = time.monotonic() + 15
        while len(ran) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        c = f._consumer
        with c._lock:
            held = len(c._held)
        f.stop()
        assert sorted(ran) == list(range(10))
        assert held <= 1000
        assert c.join(10)
        assert f.size() == 1500  # every held call went back to the queue


def test_defect7_dedup_is_atomic_across_workers(mem_url):
    runs = []
    name = q()

    def body(payload):
        runs.append(1)
        time.sleep(0.3)

    a = callq.task(name, broker=mem_url, dedup=True, concurrency=8, stop_when_idle=1.5)(body)
    b = callq.task(name, broker=mem_url, dedup=True, concurrency=8, stop_when_idle=1.5)(body)
    a.push_many([({"x": 1, "y": {"p": 1, "q": 2}},)] * 8 + [({"y": {"q": 2, "p": 1}, "x": 1},)] * 8)
    a.consume()
    b.consume()
    assert a._consumer.join(30) and b._consumer.join(30)
    assert len(runs) == 1
    assert a.stats().skipped + b.stats().skipped == 15


def test_stats_and_state_key_names_unchanged(mem_url):
    @callq.task(q(), broker=mem_url)
    def f():
        pass

    f.pause()
    assert f.connection.state.get(pause_key(f.options.queue)) is not None
    f.resume()
    assert isinstance(Capabilities(), Capabilities)
