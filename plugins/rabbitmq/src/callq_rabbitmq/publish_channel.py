"""The publish channel, in confirm mode: queue declarations and persistent publishes."""

from __future__ import annotations

import functools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import pika
import pika.spec

from callq.errors import BrokerError

from .queues import DELAY_REDECLARE, QueueArguments


class _Batch:
    """Messages of one publish call waiting for their confirms."""

    __slots__ = ("future", "remaining", "nacked", "count")

    def __init__(self, future: Future[int], count: int) -> None:
        self.future = future
        self.remaining = count
        self.count = count
        self.nacked = 0


class PublishChannel:
    """Declarations and publishes on the confirm-mode channel (I/O thread only, except ``delay_queues``).

    A publish declares its queues (once per channel; a delay queue again when its lease is old),
    pipelines its messages (persistent, ``delivery_mode=2``) and completes its future when RabbitMQ
    confirmed every one.
    """

    def __init__(self, queues: QueueArguments) -> None:
        self.channel: Any = None  # open pika channel, None while closed
        self._queues = queues
        self._seq = 0  # delivery tag of the last publish on this channel
        self._unconfirmed: OrderedDict[int, _Batch] = OrderedDict()
        self._declared: dict[str, float] = {}  # queue -> when declared on this channel (monotonic)
        self._waiting: set[Future[Any]] = set()  # futures waiting for declarations
        self._lock = threading.Lock()
        self._delay_queues: dict[str, set[str]] = {}  # queue -> delay queues this instance used

    def opened(self, ch: Any, on_closed: Callable[[Any, BaseException], None],
               on_ready: Callable[[], None]) -> None:
        """Use ``ch``; ``on_ready`` runs once it is in confirm mode."""
        self.channel = ch
        ch.add_on_close_callback(on_closed)

        def confirming(_frame: Any) -> None:
            self._seq = 0
            on_ready()

        ch.confirm_delivery(self._on_confirm, callback=confirming)

    def closed(self, err: BaseException) -> None:
        """The channel (or the connection) is gone: fail what waits on it with ``err``."""
        self.channel = None
        for fut in list(self._waiting):
            if not fut.done():
                fut.set_exception(err)
        self._waiting.clear()
        batches = {id(b): b for b in self._unconfirmed.values()}
        self._unconfirmed.clear()
        for batch in batches.values():
            if not batch.future.done():
                batch.future.set_exception(err)
        self._declared.clear()

    def forget_declared(self, queue: str) -> None:
        """Declare ``queue`` again before its next use (RabbitMQ deleted it)."""
        self._declared.pop(queue, None)

    def delay_queues(self, queue: str) -> list[str]:
        """The delay queues of ``queue`` this instance published to, sorted (any thread)."""
        with self._lock:
            return sorted(self._delay_queues.get(queue, ()))

    def declare(self, names: list[tuple[str, dict[str, Any]]], fut: Future[Any], then: Callable[[], None]) -> None:
        """Declare the queues not declared yet, in order, then run ``then``; a failure goes to ``fut``."""
        now = time.monotonic()
        todo = [(n, a) for n, a in names
                if n not in self._declared or ("x-message-ttl" in a and now - self._declared[n] > DELAY_REDECLARE)]
        if not todo:
            then()
            return
        waiting = self._waiting
        waiting.add(fut)

        def step(i: int, _frame: Any = None) -> None:
            if fut.done():
                return
            if i > 0:
                self._declared[todo[i - 1][0]] = time.monotonic()
            if i == len(todo):
                waiting.discard(fut)
                then()
                return
            name, args = todo[i]
            self.channel.queue_declare(name, durable=True, arguments=args or None,
                                       callback=functools.partial(step, i + 1))

        step(0)

    def publish(self, queue: str, bodies: Sequence[bytes], delay: float, priority: int | None,
                fut: Future[Any]) -> None:
        """Publish ``bodies`` to ``queue`` (after ``delay`` seconds); ``fut`` gets their count once confirmed."""
        names = self._queues.declarations(queue)
        target = queue
        if delay > 0:
            target, delay_args = self._queues.delay_queue(queue, delay)
            names.append((target, delay_args))
            with self._lock:
                self._delay_queues.setdefault(queue, set()).add(target)
        props = pika.BasicProperties(delivery_mode=2,
                                     priority=max(0, min(priority, 255)) if priority else None)

        def send() -> None:
            if not bodies:
                fut.set_result(0)
                return
            batch = _Batch(fut, len(bodies))
            publish = self.channel.basic_publish
            for body in bodies:
                publish("", target, body, props)
                self._seq += 1
                self._unconfirmed[self._seq] = batch

        self.declare(names, fut, send)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        nack = isinstance(method, pika.spec.Basic.Nack)
        tag = method.delivery_tag
        pending = self._unconfirmed
        if method.multiple:
            while pending:
                seq = next(iter(pending))
                if seq > tag:
                    break
                self._confirmed(pending.popitem(last=False)[1], nack)
        else:
            batch = pending.pop(tag, None)
            if batch is not None:
                self._confirmed(batch, nack)

    @staticmethod
    def _confirmed(batch: _Batch, nack: bool) -> None:
        batch.remaining -= 1
        if nack:
            batch.nacked += 1
        if batch.remaining == 0 and not batch.future.done():
            if batch.nacked:
                batch.future.set_exception(BrokerError(f"RabbitMQ refused {batch.nacked} of {batch.count} message(s)"))
            else:
                batch.future.set_result(batch.count)
