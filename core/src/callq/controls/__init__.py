"""Controls: small pieces that decide whether, when and how a message's call runs.

A control is a subclass of :class:`Control` that overrides only the phases it needs; a
consumer calls a phase only on the controls that override it, so a phase nobody uses costs
nothing on the hot path. Controls come from the ``callq_controls`` hook: core's own (expiry,
dedup, blackout, pause, delay, rate, timeout, retry, idle stop, rate log) are registered by
core's default plugin exactly the way a third party registers one.

Phases, in the order a message meets them:

* ``gate()`` (dispatcher): a reason to fetch nothing now (paused, blackout), or None.
* ``limit(n)`` (dispatcher): fetch at most this many messages now.
* ``admit(call)`` (dispatcher, after decoding; again when a held call comes due): None to run,
  or a :class:`Verdict`: :class:`Drop`, :class:`Skip`, :class:`Hold` or :class:`Defer`.
* ``pace()`` (dispatcher): seconds to wait before handing the next call to the pool.
* ``enter(call)`` / ``exit(call, error)`` (the thread or asyncio task running the call):
  around the function; ``enter`` may raise a ``Verdict``; ``exit`` may return an exception to
  replace the call's error.
* ``classify(call)`` (after a failure): set ``call.outcome`` (retry / requeue / dead) and
  ``call.retry_delay``.
* ``settled(call)`` (after the outcome was acted on).
* ``started_many(calls)`` / ``settled_many(calls)``: observers that only look (results,
  metrics): the calls a thread is about to run, and calls whose outcome was acted on, in
  batches (a chunk of short calls at once). Unlike ``enter`` and ``settled`` they keep the
  consumer's fast path; ``settled_many`` sees every call ``settled`` sees, once.
* ``tick(now)`` (monitor thread, every ``tick_every`` seconds); ``start()`` / ``stop()``.

Options: a control may declare ``Options`` (a dataclass); the task's
``controls={"<name>": {...}}`` fills it, and unknown names or fields are a ConfigError.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..consumer import Consumer
    from ..context import CallContext
    from ..options import TaskOptions

log = logging.getLogger("callq.controls")


class Verdict(Exception):  # noqa: N818 - returned by admit(), raised by enter()
    """A control's decision not to run a call now."""

    outcome = "skipped"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Drop(Verdict):
    """Do not run it, ever: ack (or dead-letter with ``to_dlq``); outcome ``expired`` by default."""

    def __init__(self, reason: str, *, outcome: str = "expired", to_dlq: bool = False) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.to_dlq = to_dlq


class Skip(Verdict):
    """Do not run it: it needs no running (dedup). Acked; outcome ``skipped``."""


class Hold(Verdict):
    """Not yet: the consumer keeps it and asks ``admit`` again at ``until`` (UNIX time)."""

    outcome = "held"

    def __init__(self, reason: str, *, until: float) -> None:
        super().__init__(reason)
        self.until = until


class Defer(Verdict):
    """Not now: put it back on the queue, visible again after ``delay`` seconds."""

    outcome = "requeue"

    def __init__(self, reason: str, *, delay: float) -> None:
        super().__init__(reason)
        self.delay = delay


class Control:
    """Base class: override the phases you need (see the module docstring)."""

    #: unique name; the key of this control's options in ``TaskOptions.controls``
    name: ClassVar[str] = ""
    #: lower runs earlier in every phase
    order: ClassVar[int] = 500
    #: a dataclass of this control's options, or None if it takes none
    Options: ClassVar[type | None] = None
    #: seconds between ``tick`` calls
    tick_every: ClassVar[float] = 1.0
    #: metadata keys without which ``admit`` has nothing to decide: a message carrying none
    #: of them skips it (None: ``admit`` sees every message). May be set in ``start``.
    admit_keys: frozenset[str] | None = None

    def __init__(self, consumer: Consumer, options: Any) -> None:
        self.consumer = consumer
        self.options = options

    @classmethod
    def applies(cls, task_options: TaskOptions, options: Any) -> bool:
        """Whether this control runs for a task (default: always)."""
        return True

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def gate(self) -> str | None:
        return None

    def limit(self, n: int) -> int:
        return n

    def admit(self, call: CallContext) -> Verdict | None:
        return None

    def pace(self) -> float:
        return 0.0

    def enter(self, call: CallContext) -> None: ...

    def exit(self, call: CallContext, error: BaseException | None) -> BaseException | None:
        return None

    def classify(self, call: CallContext) -> None: ...

    def settled(self, call: CallContext) -> None: ...

    def started_many(self, calls: list[CallContext]) -> None: ...

    def settled_many(self, calls: list[CallContext]) -> None: ...

    def tick(self, now: float) -> None: ...


PHASES = ("start", "stop", "gate", "limit", "admit", "pace", "enter", "exit", "classify", "settled",
          "started_many", "settled_many", "tick")


def registered_controls() -> dict[str, type[Control]]:
    """Every control class the plugins offer, by name."""
    from ..plugins import get_plugin_manager

    found: dict[str, type[Control]] = {}
    for group in get_plugin_manager().hook.callq_controls():
        for cls in group or ():
            if not (isinstance(cls, type) and issubclass(cls, Control)) or not cls.name:
                raise ConfigError(f"callq_controls returned {cls!r}: a Control subclass with a name is expected")
            other = found.get(cls.name)
            if other is not None and other is not cls:
                raise ConfigError(f"two controls are named {cls.name!r}: {other.__module__}.{other.__qualname__} "
                                  f"and {cls.__module__}.{cls.__qualname__}")
            found[cls.name] = cls
    return found


def control_options(cls: type[Control], given: Mapping[str, Any] | None) -> Any:
    """Build ``cls.Options`` from the task's ``controls[cls.name]``; clear errors for unknown keys."""
    if cls.Options is None:
        if given:
            raise ConfigError(f"control {cls.name!r} takes no options, got {dict(given)!r}")
        return None
    known = [f.name for f in dataclasses.fields(cls.Options)]
    unknown = [k for k in (given or {}) if k not in known]
    if unknown:
        raise ConfigError(f"control {cls.name!r} has no option {unknown[0]!r}; its options: {', '.join(known)}")
    try:
        return cls.Options(**dict(given or {}))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"control {cls.name!r}: {exc}") from None


def check_task_controls(task_options: TaskOptions) -> None:
    """Fail at decoration time for options of a control no plugin offers."""
    if not task_options.controls:
        return
    available = registered_controls()
    for name, given in task_options.controls.items():
        cls = available.get(name)
        if cls is None:
            close = difflib.get_close_matches(name, list(available), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"no control named {name!r}{hint}; installed controls: {', '.join(sorted(available))}")
        control_options(cls, given)


class ControlSet:
    """The controls of one consumer, with a list per phase holding only those that override it."""

    def __init__(self, controls: Iterable[Control]) -> None:
        self.all = sorted(controls, key=lambda c: c.order)
        for phase in PHASES:
            base = getattr(Control, phase)
            setattr(self, phase, [c for c in self.all if getattr(type(c), phase) is not base])
        self.exit = list(reversed(self.exit))  # type: ignore[has-type]
        self.tickers = [[c, 0.0] for c in self.tick]  # type: ignore[attr-defined]

    @classmethod
    def build(cls, consumer: Consumer) -> ControlSet:
        opts = consumer.options
        available = registered_controls()
        for name in opts.controls:
            if name not in available:
                check_task_controls(opts)  # raises with the full message
        made = []
        for name, control_cls in available.items():
            own = control_options(control_cls, opts.controls.get(name))
            if control_cls.applies(opts, own):
                made.append(control_cls(consumer, own))
        return cls(made)

    def admit_filter(self) -> tuple[bool, frozenset[str]]:
        """(admit every message?, else the metadata keys that call for admission); after start."""
        keys: set[str] = set()
        for control in self.admit:  # type: ignore[attr-defined]
            if control.admit_keys is None:
                return True, frozenset()
            keys |= control.admit_keys
        return False, frozenset(keys)

    def names(self) -> list[str]:
        return [c.name for c in self.all]

    def __getitem__(self, name: str) -> Control:
        for c in self.all:
            if c.name == name:
                return c
        raise KeyError(name)


def safely(what: str, fn: Any, *args: Any) -> Any:
    """Run a control phase that must not stop the consumer: log its error instead."""
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001
        log.exception("control %s failed", what)
        return None


__all__ = ["Control", "ControlSet", "Defer", "Drop", "Hold", "Skip", "Verdict", "check_task_controls",
           "registered_controls"]
