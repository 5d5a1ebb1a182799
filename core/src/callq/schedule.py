"""Periodic schedules: publish a task's call on an interval, a cron rule, or at a date.

Built on APScheduler 3 for the time arithmetic and the timer thread. What callq adds:

* **No double fire.** Any number of schedulers (processes, hosts) may run the same jobs.
  Before publishing a tick, a scheduler takes the key ``callq:sched:<job id>:<tick UTC>``
  in the task broker's shared store with ``only_new``; only the winner publishes.
* **Restarts forget nothing.** Jobs are declared in code and added at start under stable ids;
  at start each job resumes from the first tick within ``misfire_grace`` seconds back, so a
  tick missed while no scheduler ran is published once, late (the lock keys remember the
  ticks already published, by this scheduler before the restart or by another one).

The tick reaches the publishing code through a small APScheduler executor
(:class:`_TickExecutor`): APScheduler hands every executor the list of scheduled run times
of a firing, but calls a job's function without them.

Publishing is at most once per tick: a scheduler dying between taking the lock and
publishing loses that tick (nobody else may take it while the lock lives).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import socket
import threading
import traceback
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MISSED,
    JobExecutionEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.job import Job
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from .broker import connect
from .errors import ConfigError
from .message import encode, new_meta
from .state import StateStore

if TYPE_CHECKING:
    from .task import Task

log = logging.getLogger("callq.schedule")

UTC = dt.timezone.utc

#: where ``every()`` counts from unless ``start`` is given (so every process computes the same ticks)
INTERVAL_ANCHOR = dt.datetime(2000, 1, 1, tzinfo=UTC)

#: seconds a tick's lock outlives ``misfire_grace`` (clock differences between hosts, slow publish)
LOCK_MARGIN = 60.0

KEY_PREFIX = "callq:sched:"

Trigger = IntervalTrigger | CronTrigger | DateTrigger
TimeZone = str | dt.tzinfo


# --- triggers ----------------------------------------------------------------------------------


def _aware(name: str, value: dt.datetime | None, timezone: TimeZone | None) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, dt.datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None:
        if timezone is None:
            raise TypeError(f"{name} must be timezone-aware (or give timezone=); naive datetimes are ambiguous")
        return value.replace(tzinfo=_tz(timezone))
    return value


def _tz(timezone: TimeZone) -> dt.tzinfo:
    if isinstance(timezone, dt.tzinfo):
        return timezone
    if isinstance(timezone, str):
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            return ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"unknown timezone {timezone!r} (an IANA name such as 'Europe/Paris')") from None
    raise TypeError(f"timezone must be an IANA name or a tzinfo, got {type(timezone).__name__}")


def every(
    *,
    weeks: float = 0,
    days: float = 0,
    hours: float = 0,
    minutes: float = 0,
    seconds: float = 0,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
) -> IntervalTrigger:
    """Fire every fixed interval of real time (it does not follow DST: use :func:`cron` for wall-clock times).

    Ticks are ``start + n * interval``; ``start`` defaults to 2000-01-01 00:00 UTC, so
    ``every(hours=1)`` fires on the hour, ``every(seconds=30)`` at :00 and :30, and every
    process computes the same ticks. ``end``: no tick after it. Datetimes must be aware.
    """
    for name, value in (("weeks", weeks), ("days", days), ("hours", hours), ("minutes", minutes),
                        ("seconds", seconds)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise TypeError(f"every(): {name} must be a number >= 0, got {value!r}")
    length = dt.timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)
    if length < dt.timedelta(milliseconds=1):
        raise ConfigError(f"every(): the interval must be at least 1 ms, got {length.total_seconds()} s")
    first = _aware("every(): start", start, None) or INTERVAL_ANCHOR
    return IntervalTrigger(seconds=length.total_seconds(), start_date=first,
                           end_date=_aware("every(): end", end, None), timezone=UTC)


CronField = int | str | None


def cron(
    *,
    year: CronField = None,
    month: CronField = None,
    day: CronField = None,
    week: CronField = None,
    day_of_week: CronField = None,
    hour: CronField = None,
    minute: CronField = None,
    second: CronField = None,
    timezone: TimeZone | None = None,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
) -> CronTrigger:
    """Fire on wall-clock times, like cron (fields as in APScheduler's CronTrigger).

    Fields below the largest one given default to their minimum: ``cron(hour=3)`` is 03:00:00
    every day. Each field takes an int or an expression (``"*/5"``, ``"mon-fri"``, ``"1,15"``).
    ``timezone`` defaults to the machine's local zone; give it when schedulers run on hosts
    in different zones. A naive ``start``/``end`` is read in ``timezone``.
    """
    fields = {"year": year, "month": month, "day": day, "week": week, "day_of_week": day_of_week,
              "hour": hour, "minute": minute, "second": second}
    for name, value in fields.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, str))):
            raise TypeError(f"cron(): {name} must be an int or a cron expression string, got {value!r}")
    if all(value is None for value in fields.values()):
        raise ConfigError("cron(): give at least one field (e.g. minute=0 for every hour)")
    tz = _tz(timezone) if timezone is not None else _local_zone()
    try:
        return CronTrigger(**fields, timezone=tz, start_date=_aware("cron(): start", start, tz),
                           end_date=_aware("cron(): end", end, tz))
    except ValueError as exc:
        raise ConfigError(f"cron(): {exc}") from None


def crontab(expression: str, *, timezone: TimeZone | None = None) -> CronTrigger:
    """Fire on a standard five-field crontab line (``"0 3 * * mon-fri"``)."""
    tz = _tz(timezone) if timezone is not None else _local_zone()
    try:
        return CronTrigger.from_crontab(expression, timezone=tz)
    except ValueError as exc:
        raise ConfigError(f"crontab({expression!r}): {exc}") from None


def at(when: dt.datetime, *, timezone: TimeZone | None = None) -> DateTrigger:
    """Fire once at ``when`` (aware, or naive read in ``timezone``)."""
    moment = _aware("at(): when", when, timezone)
    assert moment is not None
    return DateTrigger(run_date=moment, timezone=moment.tzinfo)


def _local_zone() -> dt.tzinfo:
    from tzlocal import get_localzone

    return get_localzone()


# --- jobs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduledJob:
    """A job as added: its id, task, trigger, the checked keyword arguments, and its policies."""

    id: str
    task: Task[Any, Any]
    trigger: BaseTrigger
    kwargs: Mapping[str, Any]
    misfire_grace: float
    coalesce: bool
    state: str | None = None

    @property
    def lock_ttl(self) -> float:
        """Seconds a tick's lock lives: every scheduler that may still fire the tick sees it."""
        return self.misfire_grace + LOCK_MARGIN


@dataclass
class JobCounts:
    """What one scheduler did for one job (this process only)."""

    published: int = 0
    taken_elsewhere: int = 0  # another scheduler (or an earlier run of this one) had the tick
    missed: int = 0  # later than misfire_grace
    failed: int = 0  # publish raised
    last_tick: dt.datetime | None = None


def tick_key(job_id: str, scheduled: dt.datetime) -> str:
    """The lock key of one tick. Milliseconds in UTC: every process names a tick alike even
    when float arithmetic puts its run times a few microseconds apart."""
    ms = round(scheduled.timestamp() * 1000)
    stamp = dt.datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    return f"{KEY_PREFIX}{job_id}:{stamp.replace('+00:00', 'Z')}"


class _TickExecutor(ThreadPoolExecutor):
    """APScheduler's thread-pool executor, calling the job's function with each scheduled run time.

    Mirrors ``apscheduler.executors.base.run_job`` (misfire check, events), adding the
    argument that function does not pass. It serves callq's jobs only.
    """

    def _do_submit_job(self, job: Job, run_times: list[dt.datetime]) -> None:
        def done(future: Future[list[JobExecutionEvent]]) -> None:
            exc = future.exception()
            if exc is not None:
                self._run_job_error(job.id, exc, exc.__traceback__)
            else:
                self._run_job_success(job.id, future.result())

        self._pool.submit(_run_ticks, job, run_times).add_done_callback(done)


def _run_ticks(job: Job, run_times: list[dt.datetime]) -> list[JobExecutionEvent]:
    firing: _Firing = job.func
    # The grace is ours (APScheduler's misfire_grace_time takes whole seconds only).
    grace = dt.timedelta(seconds=firing.job.misfire_grace)
    events = []
    for run_time in run_times:
        if dt.datetime.now(UTC) - run_time > grace:
            events.append(JobExecutionEvent(EVENT_JOB_MISSED, job.id, job._jobstore_alias, run_time))
            firing(scheduled=run_time, missed=True)
            continue
        try:
            retval = firing(scheduled=run_time)
        except Exception as exc:  # noqa: BLE001 - reported as a job error event
            events.append(JobExecutionEvent(EVENT_JOB_ERROR, job.id, job._jobstore_alias, run_time,
                                            exception=exc, traceback=traceback.format_exc()))
        else:
            events.append(JobExecutionEvent(EVENT_JOB_EXECUTED, job.id, job._jobstore_alias, run_time,
                                            retval=retval))
    return events


class _Firing:
    """The APScheduler job function of one callq job: lock the tick, then publish."""

    def __init__(self, scheduler: Scheduler, job: ScheduledJob) -> None:
        self.scheduler = scheduler
        self.job = job

    def __call__(self, scheduled: dt.datetime | None = None, missed: bool = False) -> bool:
        # ``scheduled`` always comes from _TickExecutor; the default only satisfies APScheduler's
        # check that the function can be called with the job's (empty) arguments.
        if scheduled is None:
            raise RuntimeError("callq schedule jobs run through callq's tick executor only")
        return self.scheduler._fire(self.job, scheduled, missed)


# --- the scheduler ---------------------------------------------------------------------------


class Scheduler:
    """Publishes tasks' calls on schedules; run one or several (any process, any host).

    ``state``: broker URL of the shared store holding the tick locks; default: each task's
    ``state`` option, else its broker. ``misfire_grace`` (seconds) and ``coalesce`` are the
    defaults of :meth:`add`.
    """

    def __init__(self, *, state: str | None = None, misfire_grace: float = 60.0, coalesce: bool = True,
                 max_publishers: int = 4) -> None:
        _check_grace(misfire_grace)
        if state is not None and (not isinstance(state, str) or "://" not in state):
            raise ConfigError(f"Scheduler(state=...) must be a broker URL, got {state!r}")
        if isinstance(max_publishers, bool) or not isinstance(max_publishers, int) or max_publishers < 1:
            raise ConfigError(f"Scheduler(max_publishers=...) must be an int >= 1, got {max_publishers!r}")
        self.state = state
        self.misfire_grace = float(misfire_grace)
        self.coalesce = bool(coalesce)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._jobs: dict[str, ScheduledJob] = {}
        self._counts: dict[str, JobCounts] = {}
        self._lock = threading.Lock()
        self._aps: BackgroundScheduler | None = None
        self._max_publishers = max_publishers
        self._stopped = threading.Event()

    def __repr__(self) -> str:
        return f"<callq Scheduler {len(self._jobs)} job(s){' running' if self.running else ''}>"

    # --- jobs ------------------------------------------------------------------------------

    def add(
        self,
        task: Task[Any, Any],
        trigger: BaseTrigger,
        *,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        id: str | None = None,  # noqa: A002 - the job id
        misfire_grace: float | None = None,
        coalesce: bool | None = None,
    ) -> ScheduledJob:
        """Publish ``task(*args, **kwargs)`` at each tick of ``trigger``.

        Arguments are checked against the task's signature now (TypeError naming the
        argument). ``id`` names the job in every scheduler and across restarts: keep it
        stable; the default is ``"<task name>|<trigger>"``. A tick later than
        ``misfire_grace`` seconds is skipped; ``coalesce`` publishes several missed ticks once.
        """
        from .task import Task

        if not isinstance(task, Task):
            raise TypeError(f"Scheduler.add: task must be a callq task (decorated with @task), "
                            f"got {type(task).__name__}")
        if not isinstance(trigger, BaseTrigger):
            raise TypeError(f"Scheduler.add: trigger must come from every(), cron(), crontab() or at() "
                            f"(or be an APScheduler 3 trigger), got {type(trigger).__name__}")
        if getattr(trigger, "jitter", None):
            raise ConfigError("Scheduler.add: triggers with jitter fire at a different time in each "
                              "scheduler, so their ticks cannot be locked; drop the jitter")
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"Scheduler.add: args must be a tuple, got {type(args).__name__}")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise TypeError(f"Scheduler.add: kwargs must be a dict, got {type(kwargs).__name__}")
        checked = task._bind(tuple(args), dict(kwargs or {}))
        encode(checked, new_meta(), where=task.name)  # JSON check now, not at 3 a.m.
        grace = self.misfire_grace if misfire_grace is None else _check_grace(misfire_grace)
        job_id = id if id is not None else f"{task.name}|{trigger}"
        if not isinstance(job_id, str) or not job_id:
            raise TypeError(f"Scheduler.add: id must be a non-empty string, got {job_id!r}")
        state = self.state or task.options.state or task.options.broker
        self._store(state)  # a broker without a shared store fails here, not at the first tick
        job = ScheduledJob(id=job_id, task=task, trigger=trigger, kwargs=dict(checked),
                           misfire_grace=float(grace), coalesce=self.coalesce if coalesce is None else bool(coalesce),
                           state=state)
        with self._lock:
            if job_id in self._jobs:
                raise ConfigError(f"Scheduler.add: a job with id {job_id!r} exists; pass another id=")
            self._jobs[job_id] = job
            self._counts[job_id] = JobCounts()
            aps = self._aps
        if aps is not None:
            self._schedule(aps, job)
        return job

    def remove(self, job_id: str) -> bool:
        """Stop publishing this job (here; other schedulers keep their own jobs)."""
        with self._lock:
            job = self._jobs.pop(job_id, None)
            aps = self._aps
        if job is not None and aps is not None and aps.get_job(job_id) is not None:
            aps.remove_job(job_id)
        return job is not None

    def jobs(self) -> list[ScheduledJob]:
        with self._lock:
            return list(self._jobs.values())

    def next_run_time(self, job_id: str) -> dt.datetime | None:
        """The job's next tick in this scheduler (None: not started, or no tick left)."""
        aps = self._aps
        job = aps.get_job(job_id) if aps is not None else None
        return job.next_run_time if job is not None else None

    def counts(self, job_id: str) -> JobCounts:
        """This scheduler's counters for a job (a copy)."""
        with self._lock:
            c = self._counts[job_id]
            return JobCounts(c.published, c.taken_elsewhere, c.missed, c.failed, c.last_tick)

    # --- running ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._aps is not None

    def start(self) -> Scheduler:
        """Start publishing in a background thread; returns at once."""
        with self._lock:
            if self._aps is not None:
                return self
            aps = BackgroundScheduler(
                executors={"default": _TickExecutor(max_workers=self._max_publishers)},
                timezone=UTC,
                daemon=True,
            )
            self._aps = aps
            self._stopped.clear()
            jobs = list(self._jobs.values())
        aps.start()
        for job in jobs:
            self._schedule(aps, job)
        log.info("scheduler %s started with %d job(s)", self.owner, len(jobs))
        return self

    def run(self) -> None:
        """Start and block until :meth:`stop` is called (from another thread) or Ctrl-C."""
        self.start()
        try:
            while not self._stopped.wait(1.0):
                pass
        except KeyboardInterrupt:
            log.info("scheduler %s interrupted", self.owner)
        finally:
            self.stop()

    def stop(self, wait: bool = True) -> None:
        """Stop publishing; with ``wait``, publishes in progress finish first."""
        with self._lock:
            aps, self._aps = self._aps, None
        self._stopped.set()
        if aps is not None:
            aps.shutdown(wait=wait)
            log.info("scheduler %s stopped", self.owner)

    def __enter__(self) -> Scheduler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- internals -------------------------------------------------------------------------

    @staticmethod
    def _store(state: str) -> StateStore:
        conn = connect(state)
        if not conn.capabilities.shared_state:
            raise ConfigError(
                f"schedules need a shared store to lock ticks, and broker {conn.url} has none; "
                "set the task's state= (or Scheduler(state=...)) to a broker URL that has one "
                "(sqlite://, redis://, memory:// for one process)"
            )
        return conn.state

    def _schedule(self, aps: BackgroundScheduler, job: ScheduledJob) -> None:
        now = dt.datetime.now(UTC)
        # Resume from the first tick within the grace window: a tick missed while no scheduler
        # ran is published now (once, when coalescing); ticks already published hold their lock.
        first = job.trigger.get_next_fire_time(None, now - dt.timedelta(seconds=job.misfire_grace))
        if first is None or first < now - dt.timedelta(seconds=job.misfire_grace):
            log.info("schedule %r has no tick left; not scheduled", job.id)
            return
        aps.add_job(_Firing(self, job), trigger=job.trigger, id=job.id, name=job.id,
                    misfire_grace_time=None, coalesce=job.coalesce,  # grace: see _run_ticks
                    max_instances=self._max_publishers, next_run_time=first, replace_existing=True)

    def _fire(self, job: ScheduledJob, scheduled: dt.datetime, missed: bool) -> bool:
        counts = self._counts.get(job.id)
        if counts is None:  # removed meanwhile
            return False
        if missed:
            log.warning("schedule %r: tick %s missed (later than misfire_grace=%ss)",
                        job.id, scheduled.isoformat(), job.misfire_grace)
            with self._lock:
                counts.missed += 1
            return False
        key = tick_key(job.id, scheduled)
        assert job.state is not None
        store = self._store(job.state)
        if not store.put(key, self.owner, ttl=job.lock_ttl, only_new=True):
            if log.isEnabledFor(logging.DEBUG):
                log.debug("schedule %r: tick %s taken by %s", job.id, scheduled.isoformat(), store.get(key))
            with self._lock:
                counts.taken_elsewhere += 1
            return False
        try:
            job.task.publish(job.kwargs, id=key[len(KEY_PREFIX):])
        except Exception:
            log.exception("schedule %r: publishing tick %s failed", job.id, scheduled.isoformat())
            store.delete(key)  # a restart within misfire_grace may try again
            with self._lock:
                counts.failed += 1
            raise
        with self._lock:
            counts.published += 1
            counts.last_tick = scheduled
        log.debug("schedule %r: published tick %s", job.id, scheduled.isoformat())
        return True


def _check_grace(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"misfire_grace must be a number of seconds > 0, got {value!r}")
    return float(value)


__all__ = [
    "JobCounts", "ScheduledJob", "Scheduler", "Trigger", "at", "cron", "crontab", "every", "tick_key",
]
