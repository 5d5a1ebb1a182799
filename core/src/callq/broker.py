"""The Broker protocol, its records, and the connection core uses to talk to a broker."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from . import plugins
from .errors import ConfigError
from .plugins import CallqPluginManager, connection_plugin_manager, get_plugin_manager
from .state import StateStore
from .url import BrokerURL

log = logging.getLogger("callq.broker")



def default_broker_url() -> str:
    """The embedded default: a sqlite file in the user's data directory (never the project)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return "sqlite:///" + os.path.abspath(os.path.join(base, "callq", "callq.db"))


#: a result record on its way to a store: (call id, record, ttl seconds)
ResultItem = tuple[str, dict[str, Any], float]


@dataclass(frozen=True)
class Capabilities:
    """What a broker guarantees. The contract suite tests every ``True`` here.

    acks: fetched messages stay owned until acked; requeue works; unacked messages of a
        closed or dead consumer come back (at-least-once).
    persistent: messages survive a restart of the broker server (or of the process, for
        embedded brokers).
    distributed: several processes (and hosts, for networked brokers) share one queue.
    backlog: messages published while no consumer is connected are kept for later.
    native_delay: ``publish(delay=...)`` and ``requeue(delay=...)`` are honoured by the broker.
    priority: ``publish(priority=...)`` orders delivery, higher first.
    exact_size: ``size()`` is exact (not an estimate).
    shared_state: ``callq_state_store`` returns a :class:`callq.state.StateStore`.
    redelivery_timeout: seconds within which a dead consumer's messages come back.
    """

    acks: bool = True
    persistent: bool = False
    distributed: bool = False
    backlog: bool = True
    native_delay: bool = False
    priority: bool = False
    exact_size: bool = True
    shared_state: bool = False
    redelivery_timeout: float = 30.0


class Delivery:
    """One fetched message: its body, its queue, and the broker's own handle (``tag``)."""

    __slots__ = ("body", "queue", "tag", "redelivered")

    def __init__(self, body: bytes, queue: str, tag: Any, redelivered: bool = False) -> None:
        self.body = body
        self.queue = queue
        self.tag = tag
        self.redelivered = redelivered

    def __repr__(self) -> str:
        return f"Delivery(queue={self.queue!r}, tag={self.tag!r}, {len(self.body)} bytes)"


class BrokerBase:
    """Base class for broker plugins.

    Subclass it, set ``capabilities`` (class attribute or in ``__init__``), implement the
    ``callq_*`` methods (the hookspecs in :mod:`callq.hookspecs` state their contracts), and
    expose the class under the entry-point group ``callq.brokers`` with the URL scheme as
    the entry name. Methods are called from several threads: be thread-safe.
    """

    capabilities: Capabilities = Capabilities()
    #: how often the worker calls ``callq_heartbeat`` (seconds); may be set per instance
    heartbeat_interval: float = 5.0
    #: queue names this broker accepts (checked when a task is decorated, dead-letter name
    #: included): at most this many UTF-8 bytes ...
    max_queue_name: ClassVar[int] = 200
    #: ... matching this regular expression in full ...
    queue_name_pattern: ClassVar[str] = r"[^\x00-\x1f\x7f]+"
    #: ... which says this in words, for the error message
    queue_name_rule: ClassVar[str] = "no control characters"

    def __init__(self, url: BrokerURL) -> None:
        self.url = url

    def callq_capabilities(self) -> Capabilities:
        return self.capabilities

    def results_with_acks(self, store_url: str) -> bool:
        """Whether this broker writes result records for the store at ``store_url`` with its acks
        (the ``results`` argument of ``callq_ack`` / ``callq_ack_fetch``): one round trip less per
        batch where the store lives with the queue. Default: no; the results go to the store."""
        return False

    def callq_heartbeat(self) -> int:
        return 0

    def callq_close(self) -> bool:
        return True


def check_queue_name(url: str | None, queue: str) -> None:
    """ConfigError if the broker of ``url`` would refuse ``queue`` (its plugin not installed: no check)."""
    import re

    from .plugins import load_broker_class

    try:
        cls = load_broker_class(BrokerURL.parse(resolve_url(url)).scheme)
    except ConfigError:
        return  # an unknown scheme or a bad URL is reported, clearly, when it is opened
    limit = getattr(cls, "max_queue_name", BrokerBase.max_queue_name)
    pattern = getattr(cls, "queue_name_pattern", BrokerBase.queue_name_pattern)
    size = len(queue.encode())
    if size > limit or not re.fullmatch(pattern, queue):
        rule = getattr(cls, "queue_name_rule", BrokerBase.queue_name_rule)
        raise ConfigError(f"queue name {queue!r:.80} is not accepted by {cls.__name__}: at most {limit} "
                          f"bytes (this one has {size}), {rule}")


_PUBLISH_ARGS = ("queue", "bodies", "delay", "priority")


class Connection:
    """A broker opened for a URL, reached through its own plugin manager.

    Core and user code call these methods; they dispatch to the broker's ``callq_*``
    hooks so extension plugins can wrap them.
    """

    def __init__(self, url: str | BrokerURL) -> None:
        self.url = url if isinstance(url, BrokerURL) else BrokerURL.parse(url)
        broker = get_plugin_manager().hook.callq_open_broker(url=self.url)
        if broker is None:  # pragma: no cover - the default opener raises instead
            raise ConfigError(f"no plugin opened broker URL {self.url}")
        self.broker: BrokerBase = broker
        self.pm: CallqPluginManager = connection_plugin_manager(broker)
        self.hook = self.pm.hook
        self.capabilities: Capabilities = self.hook.callq_capabilities()
        self.heartbeat_interval: float = float(getattr(broker, "heartbeat_interval", 5.0))
        self._closed = False
        self._state: StateStore | None = None
        # publish straight to the broker while no plugin wraps callq_publish (nor traces hooks)
        self._tracing = os.environ.get("CALLQ_TRACE_PLUGINS", "").lower() in ("1", "true", "yes", "on")
        self._direct: Callable[..., int] | None = None
        self._direct_gen = -1  # plugins.generation() when _direct was read
        self._publish_hooks = True
        self._publish_hooks_gen = -1

    def __repr__(self) -> str:
        return f"Connection({str(self.url)!r})"

    def publish(
        self, queue: str, bodies: Sequence[bytes], *, delay: float = 0.0, priority: int | None = None
    ) -> int:
        if delay > 0 and not self.capabilities.native_delay:
            raise ConfigError(f"broker {self.url} has no native delay; the runner holds delays itself")
        direct = self.direct_publish()
        if direct is not None:
            return direct(queue, bodies, delay, priority)  # type: ignore[no-any-return]
        return self.hook.callq_publish(queue=queue, bodies=bodies, delay=delay, priority=priority)

    def direct_publish(self) -> Callable[..., int] | None:
        """The broker's own ``callq_publish(queue, bodies, delay, priority)`` while no plugin wraps
        it (nor traces hooks): what pluggy would call, without its dispatch (~1 µs a publish).
        None: go through the hook. Read again whenever a plugin is (un)registered."""
        gen = plugins.generation()
        if self._direct_gen != gen:
            impls = self.hook.callq_publish.get_hookimpls()
            direct = None
            if (len(impls) == 1 and impls[0].plugin is self.broker and not self._tracing
                    and impls[0].argnames == _PUBLISH_ARGS):
                direct = impls[0].function
            self._direct, self._direct_gen = direct, gen
        return self._direct

    def publish_hooks(self) -> bool:
        """Whether a plugin implements ``callq_before_publish`` or ``callq_after_publish``."""
        gen = plugins.generation()
        if self._publish_hooks_gen != gen:
            hook = self.hook
            self._publish_hooks = bool(hook.callq_before_publish.get_hookimpls()
                                       or hook.callq_after_publish.get_hookimpls())
            self._publish_hooks_gen = gen
        return self._publish_hooks

    def fetch(self, queue: str, max_n: int, timeout: float) -> list[Delivery]:
        return self.hook.callq_fetch(queue=queue, max_n=max_n, timeout=timeout)

    @property
    def acks_with_fetch(self) -> bool:
        """Whether the broker acks and fetches in one round trip (``callq_ack_fetch``)."""
        return bool(self.hook.callq_ack_fetch.get_hookimpls())

    def carries_results(self, store_url: str) -> bool:
        """Whether result records for ``store_url`` may go with this broker's acks (the ``results``
        of :meth:`ack` and :meth:`ack_fetch`): the broker says so, and every implementation of
        its ack hooks takes them (a plugin's own ``callq_ack`` that does not would drop them)."""
        offer = getattr(self.broker, "results_with_acks", None)
        if offer is None or not offer(store_url):
            return False
        for hook in (self.hook.callq_ack, self.hook.callq_ack_fetch):
            for impl in hook.get_hookimpls():
                if not (impl.hookwrapper or impl.wrapper) and "results" not in impl.argnames:
                    return False
        return True

    def ack_fetch(self, deliveries: Sequence[Delivery], queue: str, max_n: int, timeout: float,
                  results: Sequence[ResultItem] = ()) -> list[Delivery]:
        """Ack ``deliveries``, then fetch: in one round trip where the broker can. ``results``:
        records the broker writes in that round trip (only where :meth:`carries_results`)."""
        if not deliveries and not results:
            return self.fetch(queue, max_n, timeout)
        if self.acks_with_fetch:
            return self.hook.callq_ack_fetch(deliveries=deliveries, queue=queue, max_n=max_n,  # type: ignore[no-any-return]
                                             timeout=timeout, results=results)
        self.ack(deliveries, results)
        return self.fetch(queue, max_n, timeout)

    def ack(self, deliveries: Sequence[Delivery], results: Sequence[ResultItem] = ()) -> int:
        if not deliveries and not results:
            return 0
        return self.hook.callq_ack(deliveries=deliveries, results=results)  # type: ignore[no-any-return]

    def requeue(self, deliveries: Sequence[Delivery], delay: float = 0.0) -> int:
        return self.hook.callq_requeue(deliveries=deliveries, delay=delay) if deliveries else 0

    def heartbeat(self) -> int:
        return self.hook.callq_heartbeat()

    def purge(self, queue: str) -> int:
        return self.hook.callq_purge(queue=queue)

    def size(self, queue: str) -> int:
        return self.hook.callq_size(queue=queue)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _forget(self)
        self.hook.callq_close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def state(self) -> StateStore:
        """The broker's shared key-value store; ConfigError if it has none."""
        store = self._state
        if store is None:
            store = self.hook.callq_state_store()
            if store is None:
                raise ConfigError(
                    f"broker {self.url} has no shared store (needed for dedup, pause, schedules and "
                    "distributed qps); set the task's state= to a broker URL that has one "
                    "(sqlite://, redis://, memory://)"
                )
            self._state = store
        return store


_connections: dict[tuple[int, str], Connection] = {}
_connections_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _connections_lock
    _connections_lock = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_after_fork_in_child)


def resolve_url(url: str | None) -> str:
    """The URL to use: the argument, else ``CALLQ_BROKER_URL``, else the embedded default."""
    return url or os.environ.get("CALLQ_BROKER_URL") or default_broker_url()


def connect(url: str | None = None) -> Connection:
    """The process's shared connection for ``url`` (opened on first use, reopened after fork)."""
    key = (os.getpid(), resolve_url(url))
    conn = _connections.get(key)
    if conn is None or conn.closed:
        with _connections_lock:
            conn = _connections.get(key)
            if conn is None or conn.closed:
                conn = Connection(key[1])
                _connections[key] = conn
    return conn


def _forget(conn: Connection) -> None:
    with _connections_lock:
        for key, value in list(_connections.items()):
            if value is conn:
                del _connections[key]


def close_all() -> None:
    """Close every shared connection of this process."""
    with _connections_lock:
        conns = [c for (pid, _), c in _connections.items() if pid == os.getpid()]
    for conn in conns:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - closing must not raise on shutdown
            log.exception("closing %s failed", conn)
