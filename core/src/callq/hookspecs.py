"""callq's hook specifications (pluggy project name ``callq``).

Two families:

* **Broker hooks** (``callq_publish`` ... ``callq_close``): a broker plugin is a class whose
  methods carry these names; core instantiates it for a URL and registers the instance in
  that connection's own plugin manager. All are ``firstresult``; a broker returns a value
  that is not ``None``. Extension plugins may wrap them (``@hookimpl(wrapper=True)``).
* **Extension hooks**: open a broker for a URL, and lifecycle events (before publish,
  before/after call, consumer started/stopped, heartbeat) on which results, history,
  metrics and tracing are built as plugins.

Every broker hook may be called from several threads at once; a broker is thread-safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .broker import BrokerBase, Capabilities, Delivery, ResultItem
    from .consumer import Consumer
    from .context import CallContext
    from .controls import Control
    from .state import StateStore
    from .url import BrokerURL

hookspec = pluggy.HookspecMarker("callq")
hookimpl = pluggy.HookimplMarker("callq")


# --- discovery ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def callq_open_broker(url: BrokerURL) -> BrokerBase | None:
    """Return a broker instance for ``url``, or ``None`` if this plugin does not handle its scheme."""


# --- broker hooks --------------------------------------------------------------------------


@hookspec(firstresult=True)
def callq_capabilities() -> Capabilities:
    """Return what this broker guarantees; the contract suite checks every claim."""


@hookspec(firstresult=True)
def callq_publish(queue: str, bodies: Sequence[bytes], delay: float, priority: int | None) -> int:
    """Store ``bodies`` on ``queue`` and return how many were stored.

    After it returns, every body is durable to the extent the capabilities claim.
    ``delay`` > 0: not delivered before that many seconds (only if ``native_delay``).
    ``priority``: higher first (only if ``priority``); ``None`` is the default priority.
    """


@hookspec(firstresult=True)
def callq_fetch(queue: str, max_n: int, timeout: float) -> list[Delivery]:
    """Return 1..``max_n`` deliveries, waiting at most ``timeout`` seconds; ``[]`` if none came.

    Each delivery stays owned by this connection until acked or requeued; with ``acks``
    it comes back to the queue if this connection dies (heartbeats stop) first.
    """


@hookspec(firstresult=True)
def callq_ack(deliveries: Sequence[Delivery], results: Sequence[ResultItem]) -> int:
    """Remove ``deliveries`` for good. Acking twice or after redelivery is harmless.

    ``results``: ``(call id, record, ttl seconds)`` items for the result store at the broker's
    own URL, to write in the same round trip (``deliveries`` may then be empty). Only brokers
    whose ``results_with_acks`` says yes get any, and only if every implementation of this hook
    and of :func:`callq_ack_fetch` takes the argument; the others never see it.
    """


@hookspec(firstresult=True)
def callq_ack_fetch(deliveries: Sequence[Delivery], queue: str, max_n: int, timeout: float,
                    results: Sequence[ResultItem]) -> list[Delivery]:
    """Optional: :func:`callq_ack` ``deliveries`` (and write ``results``), then :func:`callq_fetch`,
    in one round trip.

    Once it returns, the acks are done, whatever the fetch got; if it raises, the acks may or
    may not be done (acking twice is harmless). Brokers without it get ``callq_ack`` then
    ``callq_fetch``. A plugin that wraps ``callq_ack`` should wrap this too.
    """


@hookspec(firstresult=True)
def callq_requeue(deliveries: Sequence[Delivery], delay: float) -> int:
    """Put ``deliveries`` back on their queue, visible again after ``delay`` seconds."""


@hookspec(firstresult=True)
def callq_heartbeat() -> int:
    """Keep this connection's in-flight leases alive; return deliveries of dead consumers recovered."""


@hookspec(firstresult=True)
def callq_purge(queue: str) -> int:
    """Delete every ready message of ``queue``; return how many (approximate if unknown)."""


@hookspec(firstresult=True)
def callq_size(queue: str) -> int:
    """Return the number of messages waiting on ``queue`` (in-flight ones excluded)."""


@hookspec(firstresult=True)
def callq_state_store() -> StateStore | None:
    """Return this broker's shared key-value store, or None if it has none (optional hook)."""


@hookspec(firstresult=True)
def callq_close() -> bool:
    """Release connections. Unacked deliveries return to the queue. Idempotent."""


# --- lifecycle hooks for extensions --------------------------------------------------------


@hookspec
def callq_before_publish(queue: str, messages: list[dict[str, Any]]) -> None:
    """Inspect or change ``messages`` (keyword arguments plus ``"_callq"`` metadata) before publishing.

    Raise to refuse the publish.
    """


@hookspec
def callq_after_publish(queue: str, ids: list[str], messages: list[dict[str, Any]]) -> None:
    """``messages`` were stored on ``queue``; ``ids`` are their message ids, in order."""


@hookspec
def callq_controls() -> list[type[Control]]:
    """Return control classes (see :mod:`callq.controls`) to add to every consumer."""


@hookspec
def callq_before_call(call: CallContext) -> None:
    """A call is about to run, in the thread (or asyncio task) that runs it."""


@hookspec
def callq_call_scope(call: CallContext) -> AbstractContextManager[Any] | None:
    """Return a context manager entered right before the function runs and left right after,
    in the thread or asyncio task that runs it (tracing spans, context variables), or None.
    """


@hookspec
def callq_after_call(call: CallContext) -> None:
    """A message reached an outcome; called once per outcome, for every message a consumer got.

    ``call.outcome``: ``done``, ``retry`` (another attempt was published), ``requeue``,
    ``dead`` (dead-lettered), ``expired`` (expired or misfired), ``skipped`` (dedup) or
    ``malformed`` (undecodable; dead-lettered with its raw body). ``call.result`` /
    ``call.error`` / ``call.traceback`` tell the rest; ``call.stash`` holds plugins' data.
    """


@hookspec
def callq_after_calls(calls: list[CallContext]) -> None:
    """Calls reached their outcomes: :func:`callq_after_call` in batches, for plugins that
    only record (history, metrics). Every call is in exactly one batch; a chunk of short
    calls comes as one. Unlike ``callq_after_call`` it keeps the consumer's fast path.
    """


@hookspec
def callq_consumer_started(consumer: Consumer) -> None:
    """A consumer started fetching from its queue (raising here stops it from starting)."""


@hookspec
def callq_consumer_stopped(consumer: Consumer) -> None:
    """A consumer stopped: nothing is in flight any more."""


@hookspec
def callq_heartbeat_seen(consumer: Consumer, recovered: int) -> None:
    """A consumer's heartbeat ran; ``recovered`` deliveries of dead consumers went back."""


BROKER_HOOKS = (
    "callq_capabilities",
    "callq_publish",
    "callq_fetch",
    "callq_ack",
    "callq_requeue",
    "callq_heartbeat",
    "callq_purge",
    "callq_size",
    "callq_close",
)

__all__ = ["hookimpl", "hookspec", "BROKER_HOOKS"]
