"""Settling: acks and requeues in batches, retries republished, dead letters written.

The consumer hands every delivery here exactly once; the unacked count it keeps for
bounded prefetch falls when the broker confirmed the ack or requeue.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .broker import Connection, Delivery, ResultItem
from .context import CallContext
from .message import dumps, encode, raw_for_dead_letter

if TYPE_CHECKING:
    from .options import TaskOptions

log = logging.getLogger("callq.worker")

HOST = socket.gethostname()
ACK_INTERVAL = 0.02
MAX_SETTLE_FAILURES = 8


def _drain(items: deque[Any]) -> list[Any]:
    out = []
    pop = items.popleft
    try:
        while True:
            out.append(pop())
    except IndexError:
        return out


def error_text(exc: BaseException | None) -> str | None:
    return f"{type(exc).__name__}: {exc}" if exc else None


class Settler:
    """Batches acks and requeues for one consumer; ``on_settled(n)`` reports confirmed ones."""

    def __init__(self, conn: Connection, options: TaskOptions, on_settled: Callable[[int], None],
                 wake_dispatcher: Callable[[int], None]) -> None:
        self.conn = conn
        self.options = options
        self.queue = options.queue
        self.native_delay = conn.capabilities.native_delay
        self._on_settled = on_settled
        self._wake_dispatcher = wake_dispatcher
        self.to_ack: deque[Delivery] = deque()
        self.to_requeue: deque[tuple[Delivery, float]] = deque()
        self.carried: deque[ResultItem] = deque()  # result records that go with the next acks
        self.wake = threading.Event()
        self.idle = False
        self.quiet = False  # calls run in the dispatcher's thread, which flushes next: no wake-up
        self.closed = False  # after an abort: the connection is gone, nothing more is settled
        self._failures = 0

    # --- outcomes ----------------------------------------------------------------------------

    def ack(self, delivery: Delivery) -> None:
        to_ack = self.to_ack
        to_ack.append(delivery)
        self._wake_dispatcher(len(to_ack))
        if self.idle and not self.quiet:
            self.wake.set()

    def carry(self, items: list[ResultItem]) -> None:
        """Result records the broker writes with the next acks (``conn.carries_results``)."""
        self.carried.extend(items)
        if self.idle and not self.quiet:
            self.wake.set()

    def requeue(self, deliveries: list[Delivery], delay: float = 0.0) -> None:
        if delay > 0 and not self.native_delay:
            delay = 0.0  # without native delay the message is visible again at once
        self.to_requeue.extend((d, delay) for d in deliveries)
        self.wake.set()

    def retry(self, call: CallContext) -> None:
        """Publish the next attempt, then ack this one (a crash in between runs it twice, never zero)."""
        delay = call.retry_delay
        meta = dict(call.meta)
        meta["attempt"] = call.attempt + 1
        meta["last_error"] = error_text(call.error)
        if delay > 0 and not self.native_delay:
            meta["eta"] = time.time() + delay
        body = encode(call.kwargs, meta, where=call.task.name)
        self.conn.publish(self.queue, [body], delay=delay if self.native_delay else 0.0)
        self.ack(call.delivery)

    def dead_letter(self, call: CallContext, reason: str) -> None:
        meta = dict(call.meta)
        exc = call.error
        meta["dead"] = {
            "reason": reason, "queue": self.queue, "at": time.time(), "host": HOST, "pid": os.getpid(),
            "error_type": type(exc).__name__ if exc else None,
            "error": str(exc) if exc else None,
            "traceback": call.traceback,
        }
        payload = dict(call.kwargs)
        payload["_callq"] = meta
        self.conn.publish(self.options.dlq, [dumps(payload)])
        self.ack(call.delivery)

    def dead_letter_raw(self, delivery: Delivery, reason: str) -> bool:
        """A body that is not a valid call: keep it, with why, in the dead-letter queue."""
        meta = {"dead": {"reason": reason, "queue": self.queue, "at": time.time(),
                         "host": HOST, "pid": os.getpid(), **raw_for_dead_letter(delivery.body)}}
        try:
            self.conn.publish(self.options.dlq, [dumps({"_callq": meta})])
        except Exception:  # noqa: BLE001
            log.exception("could not dead-letter a message of %s; putting it back", self.queue)
            self.requeue([delivery], 1.0)
            return False
        self.ack(delivery)
        return True

    # --- flushing ----------------------------------------------------------------------------

    def pending(self) -> bool:
        return bool(self.to_ack or self.to_requeue or self.carried)

    def take_acks(self) -> list[Delivery]:
        """The acks waiting, for the caller to send (with a fetch): then :meth:`acked` or :meth:`untake`."""
        return [] if self.closed else _drain(self.to_ack)

    def take_carried(self) -> list[ResultItem]:
        """The result records waiting, to send with those acks."""
        return _drain(self.carried) if self.carried else []

    def _carry_again(self, carried: Sequence[ResultItem]) -> None:
        """Records whose sending failed, back in front of those carried since: order kept."""
        self.carried.extendleft(reversed(carried))

    def acked(self, n: int) -> None:
        if n:
            self._failures = 0
            self._on_settled(n)

    def untake(self, deliveries: list[Delivery], carried: Sequence[ResultItem] = ()) -> None:
        """Sending them failed: the acker retries them (acking twice is harmless)."""
        self._carry_again(carried)
        if deliveries or carried:
            self.to_ack.extend(deliveries)
            self.wake.set()

    def flush(self) -> int:
        if self.closed:
            return 0
        acks = _drain(self.to_ack)
        requeues = _drain(self.to_requeue)
        carried = self.take_carried()
        done = 0
        if acks or carried:
            try:
                self.conn.ack(acks, carried)
                done += len(acks)
            except Exception as exc:  # noqa: BLE001
                self._carry_again(carried)  # kept, even when the acks are given up
                if self._give_up("ack" if acks else "result write", len(acks) or len(carried), exc):
                    done += len(acks)
                else:
                    self.to_ack.extend(acks)
        if requeues:
            by_delay: dict[float, list[Delivery]] = {}
            for d, delay in requeues:
                by_delay.setdefault(delay, []).append(d)
            for delay, ds in by_delay.items():
                try:
                    self.conn.requeue(ds, delay)
                    done += len(ds)
                except Exception as exc:  # noqa: BLE001
                    if self._give_up("requeue", len(ds), exc):
                        done += len(ds)
                    else:
                        self.to_requeue.extend((d, delay) for d in ds)
        if done:
            self._failures = 0
            self._on_settled(done)
        return done

    def _give_up(self, what: str, n: int, exc: Exception) -> bool:
        """After repeated failures stop retrying: the broker redelivers those messages itself."""
        self._failures += 1
        if self._failures >= MAX_SETTLE_FAILURES:
            log.error("%s of %d message(s) failed %d times (%s: %s); giving up: the broker redelivers "
                      "them when their lease ends (a call may run twice)", what, n,
                      self._failures, type(exc).__name__, exc)
            self._failures = 0
            return True
        log.warning("%s of %d message(s) failed (%s: %s); retrying", what, n, type(exc).__name__, exc)
        time.sleep(min(0.05 * 2 ** self._failures, 2.0))
        return False

    def loop(self, stopped: threading.Event) -> None:
        """The acker thread: bounds ack latency while the dispatcher waits."""
        while not stopped.is_set():
            if self.flush():
                time.sleep(ACK_INTERVAL)
                continue
            self.idle = True
            if not (self.to_ack or self.carried):
                self.wake.wait(0.25)
            self.idle = False
            self.wake.clear()
        self.flush()

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.pending() and not self.closed and time.monotonic() < deadline:
            self.flush() or time.sleep(0.05)
