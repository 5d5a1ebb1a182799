"""A second fetch lane: short calls that wait on I/O run on two threads that each fetch and run
their own batch, with no hand-off between them.

One thread running short calls inline leaves the CPU idle while each call waits for its reply
(a database or Redis round trip); a second thread doing the same fills that time. Handing
chunks from the dispatcher to pool threads costs a wake-up and GIL hand-offs per chunk, which
ate the gain; two independent loops, each fetching its share and running it in its own thread,
keep it (measured in docs/architecture.md, "A second fetch lane").

The sibling runs as a pool task (a graceful stop waits for it like for any call) while the
lane estimate asks for two lanes, only on brokers whose acks travel with the next fetch and
for tasks without limit or pace controls (their decisions are the dispatcher's); it checks the
gates (pause, blackout) before each fetch. It fetches without blocking and ends when the queue
is empty, the estimate drops, or the consumer stops; the dispatcher starts it again when needed.

A mixin of :class:`callq.consumer.Consumer`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .consumer import Consumer

log = logging.getLogger("callq.worker")

#: a single lane whose calls wait (wall / CPU time) at least this long gets a sibling
SIBLING_NEED = 1.25
#: how long the sibling waits for capacity (acks in flight) before it looks again
SIBLING_WAIT = 0.005


class FetchLanes:
    def __init__(self: Consumer) -> None:  # type: ignore[misc]
        self.siblings = 0  # sibling loops running (0 or 1)
        controls = self.controls
        self._siblings_allowed = (self.conn.acks_with_fetch and not self.is_async
                                  and self.options.concurrency >= 2 and self.limit >= 4
                                  and not (controls.limit or controls.pace))  # type: ignore[attr-defined]
        self._io = 1.0  # one lane's wall time per call / its CPU time (smoothed)

    def _lanes_for(self: Consumer, need: float, wall: float, cpu: float) -> int:  # type: ignore[misc]
        """Threads short calls need, from one lane's clean measure (``need``: with the cost of a
        hand-off; ``wall / cpu``: without, as two loops pay none)."""
        if self._siblings_allowed and need < 3:
            self._io = io = self._io * 0.75 + (wall / cpu if cpu > 0 else 1.0) * 0.25
            if io >= SIBLING_NEED:
                return 2
        return max(1, min(self.options.concurrency, int(need)))

    def _start_sibling(self: Consumer) -> None:  # type: ignore[misc]
        with self._lock:
            if self.siblings or self._stopping.is_set():
                return
            self.siblings = 1
        self.pool.submit(self._sibling_loop, None)

    def _sibling_loop(self: Consumer, _: object) -> None:  # type: ignore[misc]
        settler, conn, queue = self.settler, self.conn, self.queue
        gates = self.controls.gate  # type: ignore[attr-defined]
        try:
            while self._lanes == 2 and not self._stopping.is_set():
                if any(c.gate() is not None for c in gates):
                    return  # paused, a blackout: the dispatcher waits and logs
                with self._lock:
                    going = len(settler.to_ack)
                    n = min(self.limit - (self._unacked - len(self._held) - going), self.limit // 2)
                    if n <= 0:  # the other lane's acks are on their way: capacity comes back
                        self._lock.wait(SIBLING_WAIT)
                        continue
                acks, carried = settler.take_acks(), settler.take_carried()
                try:
                    deliveries = conn.ack_fetch(acks, queue, n, 0.0, carried)
                except Exception as exc:  # noqa: BLE001 - the dispatcher's next fetch retries and logs
                    settler.untake(acks, carried)
                    log.debug("sibling fetch from %s failed: %s: %s", queue, type(exc).__name__, exc)
                    return
                settler.acked(len(acks))
                if not deliveries:
                    return
                self._execute_inline(self._take_in(deliveries))
        finally:
            with self._lock:
                self.siblings = 0
                self._lock.notify_all()
