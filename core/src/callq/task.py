"""``@task``: turn a plain function into one you can push, consume and still call."""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

from typing_extensions import ParamSpec

from .broker import Connection, check_queue_name, connect
from .consumer import Consumer, Stats
from .controls import check_task_controls
from .controls.pause import pause_key
from .errors import ConfigError
from .lifecycle import install_signal_handlers
from .message import META_KEY, encode, new_meta
from .options import TaskOptions
from .results.handle import AsyncResult

if TYPE_CHECKING:
    from .processes import ProcessGroup

P = ParamSpec("P")
R = TypeVar("R")

PUBLISH_CHUNK = 1000


class Task(Generic[P, R]):
    """A function bound to a queue. Calling it runs it here; ``push`` sends it to a worker."""

    def __init__(self, fn: Callable[P, R], options: TaskOptions) -> None:
        self.fn = fn
        self.options = options
        self.name = f"{fn.__module__}.{fn.__qualname__}"
        self._signature = inspect.signature(fn)
        self._required, self._allowed = _parameters(fn, self._signature)
        kinds = {p.kind for p in self._signature.parameters.values()}
        plain = self._allowed is not None and kinds <= {inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                         inspect.Parameter.KEYWORD_ONLY}
        self._positional: tuple[str, ...] | None = tuple(
            p.name for p in self._signature.parameters.values()
            if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD) if plain else None
        self._by_position = self._positional is not None and self._required.issubset(self._positional)
        self._consumer: Consumer | None = None
        self._consumer_lock = threading.Lock()
        check_task_controls(options)
        check_queue_name(options.broker, options.queue)
        check_queue_name(options.broker, options.dlq)
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"<callq task {self.name} queue={self.options.queue!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    @property
    def connection(self) -> Connection:
        return connect(self.options.broker)

    # --- publishing --------------------------------------------------------------------------

    def push(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult:
        """Publish one call with these arguments; returns its handle (the message id, a str).

        Arguments are checked against the function's signature and must be JSON values.
        """
        kwargs = self._bind(args, kwargs)
        meta = new_meta()
        conn = self.connection
        direct = conn.direct_publish()
        if direct is None or conn.publish_hooks():
            return AsyncResult(self._publish_many([kwargs], meta=meta)[0], self)
        direct(self.options.queue, [encode(kwargs, meta, where=self.name)], 0.0, None)
        return AsyncResult(meta["id"], self)

    def publish(
        self,
        kwargs: Mapping[str, Any],
        *,
        countdown: float | None = None,
        eta: dt.datetime | float | None = None,
        priority: int | None = None,
        expires: float | None = None,
        id: str | None = None,  # noqa: A002 - the message id
    ) -> AsyncResult:
        """Publish one call given as keyword arguments, with per-message options.

        countdown: run no earlier than this many seconds from now.
        eta: run no earlier than this time (aware datetime, or a UNIX timestamp).
        priority: higher first, on brokers that support priorities.
        expires: drop the call if not started within this many seconds of publishing.
        id: the message id (default: a new uuid4 hex).
        """
        if not isinstance(kwargs, Mapping):
            raise TypeError(f"{self.name}.publish: kwargs must be a mapping of argument names, "
                            f"got {type(kwargs).__name__}")
        checked = self._bind((), dict(kwargs))
        due = _due(countdown, eta)
        if expires is not None and (isinstance(expires, bool) or not isinstance(expires, (int, float))
                                    or expires <= 0):
            raise TypeError(f"expires must be a number of seconds > 0, got {expires!r}")
        expires_at = time.time() + expires if expires is not None else None
        meta = new_meta(eta=due, expires_at=expires_at, msg_id=id)
        return AsyncResult(self._publish_many([checked], meta=meta, priority=priority)[0], self)

    def push_many(self, calls: Iterable[tuple[Any, ...] | Mapping[str, Any]]) -> list[AsyncResult]:
        """Publish many calls in batches. Each item is a tuple of positional arguments or a
        mapping of keyword arguments; returns the message ids in order."""
        ids: list[str] = []
        chunk: list[dict[str, Any]] = []
        for item in calls:
            if isinstance(item, Mapping):
                chunk.append(self._bind((), dict(item)))
            elif isinstance(item, tuple):
                chunk.append(self._bind(item, {}))
            else:
                raise TypeError(f"{self.name}.push_many: each call must be a tuple of positional "
                                f"arguments or a dict of keyword arguments, got {type(item).__name__}")
            if len(chunk) >= PUBLISH_CHUNK:
                ids += self._publish_many(chunk)
                chunk = []
        if chunk:
            ids += self._publish_many(chunk)
        return [AsyncResult(i, self) for i in ids]

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        fast = self._fast_bind(args, kwargs)
        if fast is not None:
            return fast
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}: {exc}") from None
        out: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            if self._signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                out.update(value)
            else:
                out[name] = value
        if META_KEY in out:
            raise TypeError(f"{self.name}: argument name {META_KEY!r} is reserved by callq")
        return out

    def _fast_bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
        """Bind without inspect for plain signatures; None means: let Signature.bind decide (and
        word the error)."""
        names = self._positional
        if names is None or len(args) > len(names):
            return None
        if not kwargs and len(args) == len(names) and self._by_position:
            return dict(zip(names, args))  # every positional parameter given, no required keyword-only
        out = dict(zip(names, args))
        for key, value in kwargs.items():
            if key in out or key not in self._allowed:  # type: ignore[operator]
                return None
            out[key] = value
        if not self._required.issubset(out):
            return None
        return out

    def _publish_many(self, calls: list[dict[str, Any]], meta: dict[str, Any] | None = None,
                      priority: int | None = None) -> list[str]:
        conn = self.connection
        metas = [meta] if meta is not None else [new_meta() for _ in calls]
        where = self.name
        if not conn.publish_hooks():  # nothing to show the messages to: encode them as they are
            conn.publish(self.options.queue, [encode(kwargs, m, where=where) for kwargs, m in zip(calls, metas)],
                         delay=_native_delay(conn, meta), priority=priority)
            return [m["id"] for m in metas]
        messages = []
        for kwargs, m in zip(calls, metas):
            message = dict(kwargs)
            message["_callq"] = m
            messages.append(message)
        hook = conn.hook.callq_before_publish
        if hook.get_hookimpls():
            hook(queue=self.options.queue, messages=messages)
        bodies = []
        for message in messages:
            m = message.pop("_callq")
            bodies.append(encode(message, m, where=where))
            message["_callq"] = m
        conn.publish(self.options.queue, bodies, delay=_native_delay(conn, meta), priority=priority)
        ids = [m["_callq"]["id"] for m in messages]
        after = conn.hook.callq_after_publish
        if after.get_hookimpls():
            try:
                after(queue=self.options.queue, ids=ids, messages=messages)
            except Exception:  # noqa: BLE001 - the calls are published; a plugin's failure must not hide that
                logging.getLogger("callq.task").exception("callq_after_publish hook failed (ignored)")
        return ids

    # --- consuming ---------------------------------------------------------------------------

    @overload
    def consume(self, processes: None = None) -> Consumer: ...

    @overload
    def consume(self, processes: int, *, start_method: str | None = None,
                hard_timeout: float | None = None, max_restarts: int = 5) -> ProcessGroup: ...

    def consume(self, processes: int | None = None, *, start_method: str | None = None,
                hard_timeout: float | None = None, max_restarts: int = 5) -> Consumer | ProcessGroup:
        """Start consuming this task's queue in background threads and return at once.

        Several tasks can consume in one process; ``callq.wait()`` blocks until they stop.
        A plain script keeps running while a consumer runs; SIGINT/SIGTERM stop it gracefully.

        ``processes=N`` starts N supervised worker processes instead, each with its own pool,
        and returns a :class:`callq.processes.ProcessGroup` (see docs/guide.md, "Processes and
        the command line"). ``start_method``: "fork", "spawn" or "forkserver" (default:
        ``CALLQ_START_METHOD``, else fork on Linux when this process runs one thread, else
        spawn). ``hard_timeout``: kill a worker process whose call ran longer (seconds).
        ``max_restarts``: crashes in a row, each within 5 s of starting, before giving up.
        """
        if processes is not None:
            from .processes import ProcessGroup

            return ProcessGroup(self, processes, start_method=start_method, hard_timeout=hard_timeout,
                                max_restarts=max_restarts).start()
        if start_method is not None or hard_timeout is not None:
            raise ConfigError("start_method and hard_timeout need processes=N")
        with self._consumer_lock:
            if self._consumer is not None and self._consumer.running:
                return self._consumer
            install_signal_handlers()
            self._consumer = Consumer(self).start()
            return self._consumer

    def stop(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop consuming: running calls finish, fetched ones go back to the queue."""
        consumer = self._consumer
        if consumer is not None:
            consumer.stop()
            if wait:
                consumer.join(timeout)

    def stats(self) -> Stats | None:
        return self._consumer.stats() if self._consumer else None

    # --- queue -------------------------------------------------------------------------------

    def pause(self) -> None:
        """Pause this queue for every consumer, on every host (a flag in the shared store)."""
        pause(self.options.queue, broker=self.options.state or self.options.broker)

    def resume(self) -> None:
        """Resume a paused queue."""
        resume(self.options.queue, broker=self.options.state or self.options.broker)

    def is_paused(self) -> bool:
        return is_paused(self.options.queue, broker=self.options.state or self.options.broker)

    def size(self) -> int:
        """Messages waiting on the queue."""
        return self.connection.size(self.options.queue)

    def clear(self) -> int:
        """Delete every waiting message of the queue."""
        return self.connection.purge(self.options.queue)

    def _check_kwargs(self, kwargs: dict[str, Any]) -> str | None:
        """Why these keyword arguments cannot call the function, or None."""
        missing = self._required.difference(kwargs)
        if missing:
            return f"missing argument(s) {', '.join(sorted(missing))} for {self.name}"
        if self._allowed is not None:
            unknown = kwargs.keys() - self._allowed
            if unknown:
                return f"unexpected argument(s) {', '.join(sorted(unknown))} for {self.name}"
        return None


def pause(queue: str, *, broker: str | None = None) -> None:
    """Pause ``queue``: its consumers everywhere stop fetching within about a second."""
    connect(broker).state.put(pause_key(queue), str(time.time()))


def resume(queue: str, *, broker: str | None = None) -> None:
    connect(broker).state.delete(pause_key(queue))


def is_paused(queue: str, *, broker: str | None = None) -> bool:
    return connect(broker).state.get(pause_key(queue)) is not None


def _parameters(fn: Callable[..., Any], sig: inspect.Signature) -> tuple[frozenset[str], frozenset[str] | None]:
    required: set[str] = set()
    allowed: set[str] | None = set()
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            raise ConfigError(f"{fn.__qualname__}: *{p.name} cannot travel as a JSON object of keyword "
                              "arguments; take a list parameter instead")
        if p.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise ConfigError(f"{fn.__qualname__}: positional-only parameter {p.name!r} cannot be passed "
                              "by keyword; remove the '/' from the signature")
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            allowed = None
            continue
        if p.name == META_KEY:
            raise ConfigError(f"{fn.__qualname__}: parameter name {META_KEY!r} is reserved by callq")
        if allowed is not None:
            allowed.add(p.name)
        if p.default is inspect.Parameter.empty:
            required.add(p.name)
    return frozenset(required), (frozenset(allowed) if allowed is not None else None)


def _native_delay(conn: Connection, meta: dict[str, Any] | None) -> float:
    """Seconds until the call's eta (read after the hooks), for a broker that delays natively."""
    eta = meta.get("eta") if meta is not None else None
    if eta is not None and conn.capabilities.native_delay:
        return max(0.0, eta - time.time())
    return 0.0


def _due(countdown: float | None, eta: dt.datetime | float | None) -> float | None:
    if countdown is not None and eta is not None:
        raise TypeError("give countdown or eta, not both")
    if countdown is not None:
        if isinstance(countdown, bool) or not isinstance(countdown, (int, float)) or countdown < 0:
            raise TypeError(f"countdown must be a number of seconds >= 0, got {countdown!r}")
        return time.time() + countdown
    if eta is None:
        return None
    if isinstance(eta, dt.datetime):
        if eta.tzinfo is None:
            raise TypeError("eta must be a timezone-aware datetime (naive datetimes are ambiguous)")
        return eta.timestamp()
    if isinstance(eta, bool) or not isinstance(eta, (int, float)):
        raise TypeError(f"eta must be an aware datetime or a UNIX timestamp, got {eta!r}")
    return float(eta)


def task(
    queue: str | TaskOptions,
    *,
    broker: str | None = None,
    concurrency: int = 32,
    qps: float | None = None,
    max_retries: int = 3,
    retry_backoff: float = 1.0,
    retry_backoff_max: float = 300.0,
    dead_letter_queue: str | None = None,
    prefetch_buffer: int | None = None,
    keepalive: float = 10.0,
    stop_when_idle: float | None = None,
    shutdown_timeout: float = 30.0,
    timeout: float | None = None,
    expires: float | None = None,
    expired_to_dlq: bool = False,
    misfire_grace: float | None = None,
    dedup: bool = False,
    dedup_ttl: float | None = None,
    distributed_qps: bool = False,
    blackout: Sequence[tuple[str, str]] = (),
    timezone: str | None = None,
    mode: Literal["threads", "asyncio", "gevent", "eventlet"] = "threads",
    state: str | None = None,
    rate_log_interval: float = 60.0,
    results: bool | str | None = None,
    result_ttl: float = 3600.0,
    controls: Mapping[str, Mapping[str, Any]] | None = None,
) -> Callable[[Callable[P, R]], Task[P, R]]:
    """Decorate a plain function to run it through ``queue``.

    The parameters are the fields of :class:`callq.TaskOptions` (see there for each); pass a
    ready ``TaskOptions`` instead of the queue name to share one set of options.
    """
    if isinstance(queue, TaskOptions):
        options = queue
    else:
        given = locals()
        values = {name: given[name] for name in TaskOptions.names()}
        values["blackout"] = tuple(blackout)
        values["controls"] = controls or {}
        options = TaskOptions(**values)

    def decorate(fn: Callable[P, R]) -> Task[P, R]:
        if not callable(fn):
            raise TypeError(f"@task decorates a function, got {type(fn).__name__}")
        return Task(fn, options)

    return decorate
