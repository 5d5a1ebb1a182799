"""Schedules: ticks published on time, once across schedulers and processes, after restarts."""

from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import callq
from callq.broker import Capabilities, Connection
from callq.brokers.memory import MemoryBroker
from callq.errors import ConfigError
from callq.message import decode
from callq.schedule import KEY_PREFIX, Scheduler, at, cron, crontab, every, tick_key
from callq.testing import drain, fresh_queue_name
from callq_redis.testing import fresh_prefix

UTC = dt.timezone.utc


def _tick_of(meta: dict[str, Any], job_id: str) -> float:
    """The tick a scheduled message was published for (its id is ``<job id>:<tick UTC>``)."""
    prefix = job_id + ":"
    assert meta["id"].startswith(prefix), meta["id"]
    return dt.datetime.fromisoformat(meta["id"][len(prefix):].replace("Z", "+00:00")).timestamp()


def _messages(url: str, queue: str, expected: int, timeout: float = 5.0) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    conn = Connection(url)
    try:
        got = drain(conn, queue, expected, timeout)
        extra = conn.fetch(queue, 100, 0.3)  # nothing more may be waiting
        conn.ack(extra)
        return [decode(d.body) for d in got + extra]
    finally:
        conn.close()


def _wait_until_just_after_a_second() -> None:
    time.sleep(math.ceil(time.time()) - time.time() + 0.05)


# --- triggers ------------------------------------------------------------------------------


def test_every_is_aligned_so_every_process_computes_the_same_ticks() -> None:
    now = dt.datetime(2024, 5, 6, 10, 7, 12, tzinfo=UTC)
    assert every(minutes=15).get_next_fire_time(None, now) == dt.datetime(2024, 5, 6, 10, 15, tzinfo=UTC)
    assert every(hours=1).get_next_fire_time(None, now) == dt.datetime(2024, 5, 6, 11, tzinfo=UTC)
    assert every(seconds=30).get_next_fire_time(None, now) == dt.datetime(2024, 5, 6, 10, 7, 30, tzinfo=UTC)
    start = dt.datetime(2024, 5, 6, 10, 0, 5, tzinfo=UTC)
    assert every(minutes=1, start=start).get_next_fire_time(None, now) == dt.datetime(2024, 5, 6, 10, 8, 5, tzinfo=UTC)
    end = dt.datetime(2024, 5, 6, 10, 7, 20, tzinfo=UTC)
    assert every(seconds=30, end=end).get_next_fire_time(None, now) is None


def test_cron_and_crontab_follow_the_wall_clock_of_their_timezone() -> None:
    before_dst = dt.datetime(2024, 3, 30, 12, 0, tzinfo=UTC)  # Paris moves to CEST on the 31st
    first = cron(hour=3, minute=0, timezone="Europe/Paris").get_next_fire_time(None, before_dst)
    assert first is not None and first.astimezone(UTC) == dt.datetime(2024, 3, 31, 1, 0, tzinfo=UTC)
    weekday = crontab("30 8 * * mon-fri", timezone="UTC")
    saturday = dt.datetime(2024, 5, 4, 9, 0, tzinfo=UTC)
    assert weekday.get_next_fire_time(None, saturday) == dt.datetime(2024, 5, 6, 8, 30, tzinfo=UTC)
    every5 = cron(minute="*/5", timezone=UTC)
    assert every5.get_next_fire_time(None, dt.datetime(2024, 1, 1, 0, 7, tzinfo=UTC)) == \
        dt.datetime(2024, 1, 1, 0, 10, tzinfo=UTC)


def test_at_fires_once_and_reads_naive_times_in_the_given_zone() -> None:
    when = at(dt.datetime(2030, 1, 2, 3, 4, 5), timezone="Asia/Tokyo")
    fire = when.get_next_fire_time(None, dt.datetime(2029, 1, 1, tzinfo=UTC))
    assert fire is not None and fire.astimezone(UTC) == dt.datetime(2030, 1, 1, 18, 4, 5, tzinfo=UTC)
    assert when.get_next_fire_time(fire, fire) is None


def test_trigger_arguments_are_checked() -> None:
    with pytest.raises(ConfigError, match="at least 1 ms"):
        every()
    with pytest.raises(TypeError, match="seconds"):
        every(seconds="5")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="naive"):
        at(dt.datetime(2030, 1, 1))
    with pytest.raises(TypeError, match="naive"):
        every(hours=1, start=dt.datetime(2030, 1, 1))
    with pytest.raises(ConfigError, match="at least one field"):
        cron()
    with pytest.raises(ConfigError, match="cron"):
        cron(hour="25")
    with pytest.raises(ConfigError, match="timezone"):
        cron(hour=1, timezone="Mars/Olympus")
    with pytest.raises(TypeError, match="hour"):
        cron(hour=1.5)  # type: ignore[arg-type]


def test_tick_keys_ignore_float_noise() -> None:
    a = dt.datetime.fromtimestamp(1_700_000_000.1 + 0.1 + 0.1, UTC)
    b = dt.datetime.fromtimestamp(1_700_000_000.3, UTC)
    assert tick_key("j", a) == tick_key("j", b) == f"{KEY_PREFIX}j:2023-11-14T22:13:20.300Z"


# --- add() ---------------------------------------------------------------------------------


def test_add_checks_arguments_against_the_task_signature(mem_url: str) -> None:
    @callq.task(fresh_queue_name("sched"), broker=mem_url)
    def report(day: int, *, fmt: str = "pdf") -> None: ...

    sched = Scheduler()
    with pytest.raises(TypeError, match="nope"):
        sched.add(report, every(seconds=1), args=(1,), kwargs={"nope": 2})
    with pytest.raises(TypeError, match="day"):
        sched.add(report, every(seconds=1))
    with pytest.raises(TypeError, match="'fmt' is not JSON"):
        sched.add(report, every(seconds=1), args=(1,), kwargs={"fmt": object()})
    with pytest.raises(TypeError, match="callq task"):
        sched.add(lambda: None, every(seconds=1))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="misfire_grace"):
        sched.add(report, every(seconds=1), args=(1,), misfire_grace=0)
    job = sched.add(report, cron(hour=3, minute=0, timezone=UTC), args=(1,), kwargs={"fmt": "csv"}, id="nightly")
    assert job.kwargs == {"day": 1, "fmt": "csv"}
    with pytest.raises(ConfigError, match="nightly"):
        sched.add(report, every(seconds=1), args=(2,), id="nightly")
    assert [j.id for j in sched.jobs()] == ["nightly"]
    assert sched.next_run_time("nightly") is None  # not started
    with sched:
        nxt = sched.next_run_time("nightly")
        assert nxt is not None and nxt.astimezone(UTC).hour == 3 and nxt > dt.datetime.now(UTC)
    assert sched.remove("nightly") and not sched.remove("nightly")


class _NoStateBroker(MemoryBroker):
    capabilities = Capabilities(shared_state=False, native_delay=True)

    def callq_state_store(self) -> None:  # type: ignore[override]
        return None


class _NoStateOpener:
    @callq.hookimpl
    def callq_open_broker(self, url: Any) -> Any:
        return _NoStateBroker(url) if url.scheme == "nostate" else None


def test_a_broker_without_shared_state_is_a_config_error(mem_url: str) -> None:
    opener = _NoStateOpener()
    callq.register(opener, name="test-nostate-opener")
    try:
        @callq.task(fresh_queue_name("sched"), broker="nostate://x")
        def ping() -> None: ...

        with pytest.raises(ConfigError, match="shared store"):
            Scheduler().add(ping, every(seconds=1))
        # the store may live elsewhere: the task's state= or the scheduler's
        Scheduler(state=mem_url).add(ping, every(seconds=1))

        @callq.task(fresh_queue_name("sched"), broker="nostate://x", state=mem_url)
        def pong() -> None: ...

        Scheduler().add(pong, every(seconds=1))
    finally:
        callq.unregister(opener)


# --- firing ---------------------------------------------------------------------------------


def test_interval_job_publishes_each_tick_on_time(mem_url: str) -> None:
    queue = fresh_queue_name("sched")

    @callq.task(queue, broker=mem_url)
    def ping(n: int, label: str = "") -> None: ...

    _wait_until_just_after_a_second()
    sched = Scheduler()
    sched.add(ping, every(seconds=1), args=(7,), kwargs={"label": "x"}, id="ping")
    started = time.time()
    sched.start()
    time.sleep(3.5)
    sched.stop()
    messages = _messages(mem_url, queue, 4)
    ticks = sorted(_tick_of(meta, "ping") for _, meta in messages)
    first = math.floor(started)  # the tick just passed counts as missed within grace: published at start
    assert ticks == [first, first + 1, first + 2, first + 3]
    for kwargs, meta in messages:
        assert kwargs == {"n": 7, "label": "x"}
        lateness = meta["published_at"] - _tick_of(meta, "ping")
        assert 0 <= lateness < 0.5, lateness
    counts = sched.counts("ping")
    assert (counts.published, counts.taken_elsewhere, counts.missed) == (4, 0, 0)


def test_two_schedulers_in_one_process_publish_each_tick_once(mem_url: str) -> None:
    queue = fresh_queue_name("sched")

    @callq.task(queue, broker=mem_url)
    def ping() -> None: ...

    a, b = Scheduler(), Scheduler()
    for s in (a, b):
        s.add(ping, every(seconds=0.25), id="quarter")
    with a, b:
        time.sleep(2.0)
    messages = _messages(mem_url, queue, 8)
    ticks = Counter(_tick_of(meta, "quarter") for _, meta in messages)
    assert len(ticks) >= 8 and set(ticks.values()) == {1}
    assert a.counts("quarter").taken_elsewhere + b.counts("quarter").taken_elsewhere >= len(ticks) - 1


def test_restart_publishes_a_missed_tick_once_and_never_twice(mem_url: str) -> None:
    queue = fresh_queue_name("sched")

    @callq.task(queue, broker=mem_url)
    def ping() -> None: ...

    def scheduler(grace: float, coalesce: bool = True) -> Scheduler:
        s = Scheduler(misfire_grace=grace, coalesce=coalesce)
        s.add(ping, every(seconds=2), id="two")  # same id in each "process": the same job
        return s

    _wait_until_just_after_a_second()
    if math.floor(time.time()) % 2:
        time.sleep(1.0)  # start right after an even tick
    def sleep_until(offset: float) -> None:
        time.sleep(max(0.0, t0 + offset - time.time()))

    first = scheduler(grace=5).start()
    t0 = math.floor(time.time())
    sleep_until(0.5)
    first.stop()  # published tick t0 (the one just passed)
    sleep_until(2.7)  # tick t0+2 passes while nothing runs
    # Not coalescing, the restarted scheduler tries t0 (within the grace, already published) and t0+2.
    second = scheduler(grace=3, coalesce=False).start()  # window from t0-0.3: ticks t0 and t0+2
    sleep_until(3.2)
    second.stop()
    assert (second.counts("two").published, second.counts("two").taken_elsewhere) == (1, 1)

    sleep_until(6.3)  # ticks t0+4 and t0+6 pass; with a 1.5 s grace t0+4 is too old now
    third = scheduler(grace=1.5).start()
    sleep_until(6.8)
    third.stop()
    assert (third.counts("two").published, third.counts("two").taken_elsewhere) == (1, 0)
    messages = _messages(mem_url, queue, 3)
    ticks = sorted(_tick_of(meta, "two") for _, meta in messages)
    assert ticks == [t0, t0 + 2, t0 + 6]
    late = {(_tick_of(meta, "two")): meta["published_at"] for _, meta in messages}
    assert late[t0 + 2] - (t0 + 2) > 0.5, "the missed tick was published late, at restart"


_SCHEDULER_PROCESS = r"""
import json, sys, time
import callq
from callq.schedule import Scheduler, every

url, queue, start, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])

@callq.task(queue, broker=url)
def tick(source: str) -> None: ...

sched = Scheduler()
sched.add(tick, every(seconds=1), args=("sched",), id="every-second")
callq.connect(url).state.get("warm-up")  # file open before the start
time.sleep(max(0.0, start - time.time()))
sched.start()
time.sleep(seconds)
sched.stop()
c = sched.counts("every-second")
print(json.dumps({"published": c.published, "taken_elsewhere": c.taken_elsewhere, "missed": c.missed}))
"""


@pytest.mark.parametrize("broker", ["sqlite", "redis"])
def test_schedulers_in_several_processes_publish_each_tick_once(tmp_path: Path, broker: str) -> None:
    if broker == "redis":
        with fresh_prefix() as prefix:
            _several_processes(f"redis://127.0.0.1:6379/0?prefix={prefix}")
    else:
        _several_processes(f"sqlite:///{tmp_path}/sched.db")


def _several_processes(url: str) -> None:
    queue = fresh_queue_name("sched")
    start = math.ceil(time.time() + 2.0) + 0.5  # between ticks, after the interpreters are up
    procs = [subprocess.Popen([sys.executable, "-c", _SCHEDULER_PROCESS, url, queue, str(start), "5"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=40)
        assert p.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    messages = _messages(url, queue, 6)
    ticks = Counter(_tick_of(meta, "every-second") for _, meta in messages)
    assert set(ticks.values()) == {1}, f"a tick was published twice: {ticks}"
    expected = set(range(math.floor(start), math.floor(start) + 6))  # the tick at start (within grace) + 5
    assert set(ticks) == expected
    assert sum(r["published"] for r in reports) == len(messages)
    assert sum(r["taken_elsewhere"] for r in reports) == 2 * len(messages), reports
    assert all(kwargs == {"source": "sched"} for kwargs, _ in messages)
