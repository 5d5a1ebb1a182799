"""``redis://host:6379/0?mode=reliable|lmove|fast``: queues on Redis lists.

Also ``redis+cluster://`` (Redis Cluster) and ``redis+sentinel://`` (see topology.py).

Modes (URL parameter ``mode``):

* ``reliable`` (default): a Lua script moves up to ``max_n`` messages at once from the queue
  into the consumer's in-flight hash; ack deletes them from it. Every consumer refreshes its
  score in the queue's ``consumers`` zset (heartbeat); a consumer silent for longer than the
  lease has its in-flight messages put back by any live consumer of that queue.
* ``lmove``: the classic BLMOVE/LMOVE pattern: messages move into a processing list per
  consumer and queue; ack is LREM. Same heartbeat recovery. No priorities.
* ``fast``: plain pop, at-most-once: a message popped by a consumer that dies is lost.

Delays (every mode) live in a zset by due time, moved to the list by fetch (Lua).
Priorities (reliable, fast) use one list per non-zero level. Times are Redis server times.
Every key of a queue carries the hash tag ``{queue}`` (one cluster slot per queue).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from functools import partial

from callq.broker import BrokerBase, Capabilities, Delivery, ResultItem
from callq.errors import ConfigError
from callq.results.store import open_store
from callq.url import BrokerURL

from . import _lua
from .client import HeldConnection, HeldScript, RetryingClient
from .keys import CHUNK
from .publish import ListPublishing
from .recovery import ListRecovery
from .results import result_args, store_prefix
from .state import SharedStateMixin
from .topology import TOPOLOGY_PARAMS, open_target

log = logging.getLogger("callq.redis")

MODES = ("reliable", "lmove", "fast")
KNOWN_PARAMS = ("mode", "prefix", "lease", "retry", "socket_timeout", "block", "connect_timeout", *TOPOLOGY_PARAMS)
#: longest single blocking call; a fetch with a longer timeout loops
MAX_BLOCK = 1.0
#: idle wait slice on a queue that holds priority levels (only level 0 can be waited on)
LEVEL_POLL = 0.1
#: Redis times out blocked clients on its timer tick (hz 10: every 100 ms), so a blocking call
#: returns up to a tick late; a wait that must end on time blocks until a tick before, then sleeps
REDIS_TICK = 0.1


class RedisBroker(ListPublishing, ListRecovery, SharedStateMixin, BrokerBase):
    """Queues on Redis lists; see the module docstring and docs/brokers/redis.md.

    This class reads the URL, fetches (the claim script) and acks. Publishing is in publish.py;
    requeue, lost-reply orphans, heartbeat and close (giving messages back) in recovery.py.
    """

    # Redis keys are binary-safe strings up to 512 MB; the name is part of several keys
    max_queue_name = 10_000
    queue_name_rule = "no control characters"

    def __init__(self, url: BrokerURL) -> None:
        super().__init__(url)
        url.check_params(KNOWN_PARAMS)
        self.mode = url.str_param("mode", "reliable", choices=MODES)
        self.prefix = url.str_param("prefix", "callq")
        if not self.prefix or any(c in self.prefix for c in "{}"):
            raise ConfigError(f"broker URL {url}: prefix must be non-empty and without braces")
        lease = url.float_param("lease", 10.0, minimum=1.0)
        self.lease = lease
        self.heartbeat_interval = lease / 5  # type: ignore[misc]  # per instance, from the URL
        # a consumer silent this long is dead; a live one renews every heartbeat_interval
        self.dead_after_ms = int((lease - self.heartbeat_interval) * 1000)
        self.block = url.float_param("block", MAX_BLOCK, minimum=0.01)
        socket_timeout = url.float_param("socket_timeout", 10.0, minimum=0.5)
        if socket_timeout <= self.block + 1:
            raise ConfigError(f"broker URL {url}: socket_timeout must exceed block + 1 second")
        retry_for = url.float_param("retry", 60.0)
        connect_timeout = url.float_param("connect_timeout", 5.0, minimum=0.1)
        self.capabilities = Capabilities(
            acks=self.mode != "fast",
            persistent=False,  # depends on the server's AOF/RDB settings: not claimed
            distributed=True,
            backlog=True,
            native_delay=True,
            priority=self.mode != "lmove",
            exact_size=True,
            shared_state=True,
            redelivery_timeout=lease if self.mode != "fast" else 0.0,
        )
        self.target = open_target(url, socket_timeout=socket_timeout)
        self.client = self.target.client
        self.rc = RetryingClient(self.target, url, retry_for, connect_timeout)
        self.rc.connect()  # unreachable, wrong password or DB: a clear error now
        self._held = HeldConnection(self.client)  # publish's one LPUSH, without the pool's checkout
        self.consumer_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:10]}".replace(":", "-")
        self._claim = HeldScript(self.client, _lua.CLAIM)  # the fetch lanes' claims, likewise
        self._lmove_claim = self.client.register_script(_lua.LMOVE_CLAIM)
        self._publish_delayed = self.client.register_script(_lua.PUBLISH_DELAYED)
        self._requeue = self.client.register_script(_lua.REQUEUE)
        self._lmove_requeue = self.client.register_script(_lua.LMOVE_REQUEUE)
        self._heartbeat = self.client.register_script(_lua.HEARTBEAT)
        self._release = self.client.register_script(_lua.RELEASE)
        self._release_fields = self.client.register_script(_lua.RELEASE_FIELDS)
        self._size = self.client.register_script(_lua.SIZE)
        self._purge = self.client.register_script(_lua.PURGE)
        self._results_prefix = store_prefix(url)
        # What this consumer handed out and not yet acked (to find orphans after a lost reply).
        self._lock = threading.Lock()
        self._held_fields: dict[str, set[bytes]] = {}  # reliable: queue -> fields
        self._held_bodies: Counter[tuple[str, bytes]] = Counter()  # lmove
        self._seq = 0
        self._suspect: set[str] = set()  # queues where a claim failed in transit: look for orphans
        self._queues: set[str] = set()  # fetched from: heartbeats keep us alive there
        self._queue_keys: dict[str, str] = {}  # queue -> its level-0 list key (publish)
        self._closed = False

    # --- fetch ---------------------------------------------------------------------------

    def results_with_acks(self, store_url: str) -> bool:
        """Reliable mode writes the records of the result store on its own URL (the default
        store) in the claim script that takes the acks: no round trip of their own."""
        return self.mode == "reliable" and not self.target.cluster and store_url == self.url.raw

    def callq_fetch(self, queue: str, max_n: int, timeout: float) -> list[Delivery]:
        return self._fetch(queue, max_n, timeout, [])

    def callq_ack_fetch(self, deliveries: Sequence[Delivery], queue: str, max_n: int,
                        timeout: float, results: Sequence[ResultItem]) -> list[Delivery]:
        if self.mode != "reliable" or max_n <= 0 or any(d.queue != queue for d in deliveries):
            self.callq_ack(deliveries, results)
            return self.callq_fetch(queue, max_n, timeout)
        return self._fetch(queue, max_n, timeout, [d.tag for d in deliveries], results)

    def _fetch(self, queue: str, max_n: int, timeout: float, acks: list[bytes],
               results: Sequence[ResultItem] = ()) -> list[Delivery]:
        """``acks``: in-flight fields to delete, ``results``: records to store, both in the first
        claim's round trip (reliable mode)."""
        if max_n <= 0:
            return []
        deadline = time.monotonic() + timeout
        base = self._list_key(queue)
        while True:
            out, next_due_ms, has_levels = self._take(queue, max_n, acks, results)
            if acks:
                with self._lock:
                    self._held_fields.get(queue, set()).difference_update(acks)
                acks = []
            results = ()
            if out or self._closed:
                return out
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            # the timeout, or the next delayed message's due time: both must be kept to a few ms
            target = remaining if next_due_ms < 0 else min(remaining, next_due_ms / 1000 + 0.001)
            if target <= REDIS_TICK:
                time.sleep(target)
                continue
            wait = min(self.block, target - REDIS_TICK)
            if has_levels:
                wait = min(wait, LEVEL_POLL)
            wait = max(wait, 0.01)  # 0 would block forever
            if self.mode == "lmove":
                proc = self._own(queue, "proc")
                body = self.rc.call("fetch", lambda w=wait, p=proc: self.client.blmove(base, p, w, "RIGHT", "LEFT"),
                                    on_error=partial(self._suspect.add, queue))
                if body == _lua.WAKE.encode():  # a wake-up marker, not a message
                    self.rc.call("fetch", lambda p=proc, b=body: self.client.lrem(p, 1, b))
                    continue
                if body is not None:
                    with self._lock:
                        self._held_bodies[(queue, body)] += 1
                    more = self._take(queue, max_n - 1)[0] if max_n > 1 else []
                    return [Delivery(body, queue, proc), *more]
            else:
                # Wait without taking: rotating the list onto itself (RIGHT to RIGHT) changes
                # nothing but returns as soon as it is non-empty; the claim script then takes.
                self.rc.call("fetch", lambda w=wait: self.client.blmove(base, base, w, "RIGHT", "RIGHT"))

    def _take(self, queue: str, max_n: int, acks: Sequence[bytes] = (),
              results: Sequence[ResultItem] = ()) -> tuple[list[Delivery], int, bool]:
        """One claim round trip: (deliveries, ms until the next delayed message or -1, has levels).
        ``acks`` (reliable mode): in-flight fields deleted first, ``results`` stored, in the same
        script."""
        b = self._base(queue)
        suspect = partial(self._suspect.add, queue)
        if self.mode == "lmove":
            proc = self._own(queue, "proc")
            self._queues.add(queue)
            res = self.rc.call("fetch", lambda: self._lmove_claim(
                keys=[f"{b}:q", proc, f"{b}:delayed", f"{b}:seq", f"{b}:consumers"],
                args=[b, self.consumer_id, max_n, self.dead_after_ms]), on_error=suspect)
            bodies = res[3:]
            if bodies:
                with self._lock:
                    for body in bodies:
                        self._held_bodies[(queue, body)] += 1
            out = [Delivery(body, queue, proc) for body in bodies]
        else:
            track = self.mode == "reliable"
            if track:
                self._queues.add(queue)
            keys = [f"{b}:q", f"{b}:levels", f"{b}:delayed", f"{b}:seq", f"{b}:consumers",
                    self._own(queue, "inflight")]
            tail = [len(acks), *acks, *(result_args(self._results_prefix, results) if results else ())]

            def claim() -> list:
                # fresh field numbers on every attempt: a retry after a lost reply must not
                # overwrite the fields the first attempt may have written
                with self._lock:
                    seq = self._seq
                    self._seq += max_n
                return self._claim(keys=keys, args=[b, self.consumer_id, max_n, seq, self.dead_after_ms,
                                                    1 if track else 0, *tail])

            res = self.rc.call("fetch", claim, on_error=suspect if track else None)
            bodies = _split(res[4], res[5])
            if track:
                fields = res[3].split(b" ") if bodies else []
                if fields:
                    with self._lock:
                        self._held_fields.setdefault(queue, set()).update(fields)
                out = [Delivery(body, queue, field) for field, body in zip(fields, bodies, strict=True)]
            else:
                out = [Delivery(body, queue, None) for body in bodies]
        if res[1]:
            log.warning("redis %s: gave back %d message(s) of dead consumers", self.url, res[1])
        if queue in self._suspect:
            self._reconcile(queue)
        return out, int(res[0]), bool(res[2])

    # --- ack -----------------------------------------------------------------------------

    def callq_ack(self, deliveries: Sequence[Delivery], results: Sequence[ResultItem]) -> int:
        if results:  # no claim to ride on: the store at our URL writes them, before the acks
            open_store(self.url.raw).put_many(results)
        if self.mode == "fast" or not deliveries:
            return len(deliveries)
        if self.mode == "reliable":
            for queue, fields in self._by_queue(deliveries, tags=True).items():
                h = self._own(queue, "inflight")
                for start in range(0, len(fields), CHUNK):
                    chunk = fields[start:start + CHUNK]
                    self.rc.call("ack", lambda c=chunk, k=h: self.client.hdel(k, *c))
                with self._lock:
                    self._held_fields.get(queue, set()).difference_update(fields)
            return len(deliveries)
        for queue, bodies in self._by_queue(deliveries, tags=False).items():
            proc = self._own(queue, "proc")

            def send(bs: list[bytes] = bodies, p: str = proc) -> None:
                pipe = self.client.pipeline(transaction=False)
                for body in bs:
                    pipe.lrem(p, -1, body)
                pipe.execute()

            self.rc.call("ack", send)
        self._forget_bodies(deliveries)
        return len(deliveries)

    def _forget_bodies(self, deliveries: Sequence[Delivery]) -> None:
        with self._lock:
            held = self._held_bodies
            for d in deliveries:
                key = (d.queue, d.body)
                left = held[key] - 1
                if left > 0:
                    held[key] = left
                else:
                    held.pop(key, None)

    # --- size / purge --------------------------------------------------------------------

    def callq_size(self, queue: str) -> int:
        b = self._base(queue)
        return int(self.rc.call("size", lambda: self._size(keys=[f"{b}:q", f"{b}:levels", f"{b}:delayed"],
                                                           args=[b])))

    def callq_purge(self, queue: str) -> int:
        b = self._base(queue)
        return int(self.rc.call("purge", lambda: self._purge(keys=[f"{b}:q", f"{b}:levels", f"{b}:delayed"],
                                                             args=[b])))

    def __repr__(self) -> str:
        return f"RedisBroker({str(self.url)!r}, mode={self.mode!r}, consumer={self.consumer_id!r})"


def _split(lengths: bytes, joined: bytes) -> list[bytes]:
    """The bodies of a claim reply: ``joined`` cut at the space-separated byte ``lengths``."""
    if not lengths:
        return []
    out = []
    start = 0
    for n in map(int, lengths.split(b" ")):
        end = start + n
        out.append(joined[start:end])
        start = end
    return out
