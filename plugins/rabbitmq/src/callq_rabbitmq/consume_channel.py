"""The consume channel: one consumer per fetched queue, acks and nacks."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from callq.broker import Delivery
from callq.errors import BrokerError

from .errors import log_failure
from .inbox import Inbox
from .publish_channel import PublishChannel
from .queues import QueueArguments

log = logging.getLogger("callq.rabbitmq")


class ConsumeChannel:
    """Consumers, deliveries and their settling (I/O thread only, except ``live``).

    Each fetched queue has one consumer (``basic_consume``) with its own ``basic_qos`` prefetch;
    its deliveries go to the inbox. ``gen`` counts the channels opened: a delivery's tag is
    ``(gen, delivery_tag, priority)``, and a delivery of an older channel is neither acked nor
    nacked (the channel is gone, RabbitMQ redelivers it).
    """

    def __init__(self, queues: QueueArguments, publisher: PublishChannel, inbox: Inbox) -> None:
        self.channel: Any = None  # open pika channel, None while closed
        self.gen = 0
        self._queues = queues
        self._publisher = publisher  # declares a queue before its consumer starts
        self._inbox = inbox
        self._consumer_tags: dict[str, str] = {}
        self._waiting: set[Future[Any]] = set()  # subscriptions waiting for basic_consume_ok

    def opened(self, ch: Any, on_closed: Callable[[Any, BaseException], None]) -> None:
        """Use ``ch``: a new generation; every queue of the inbox is subscribed again."""
        self.channel = ch
        ch.add_on_close_callback(on_closed)
        ch.add_on_cancel_callback(self._on_consumer_cancelled)
        self.gen += 1
        subs = self._inbox.subscriptions()
        self._consumer_tags.clear()
        for queue, qos in subs.items():
            self.subscribe(queue, qos, None)

    def closed(self, err: BaseException) -> None:
        """The channel (or the connection) is gone: drop its deliveries, fail what waits on it."""
        self.channel = None
        self._inbox.drop()
        for fut in list(self._waiting):
            if not fut.done():
                fut.set_exception(err)
        self._waiting.clear()
        self._consumer_tags.clear()

    def live(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        """The deliveries received on the current channel (any thread)."""
        gen = self.gen
        return [d for d in deliveries if d.tag[0] == gen]

    def subscribe(self, queue: str, qos: int, fut: Future[Any] | None) -> None:
        """(Re)start the consumer of ``queue`` with prefetch ``qos``; ``fut`` (None: log a failure) gets True."""
        gen = self.gen
        ch = self.channel

        def consume() -> None:
            if ch is not self.channel or gen != self.gen:
                if fut is not None and not fut.done():
                    fut.set_exception(BrokerError("consume channel closed while subscribing"))
                return
            old = self._consumer_tags.pop(queue, None)
            if old:
                ch.basic_cancel(old, callback=lambda _f: None)  # deliveries already here stay ours; in-flight ones are requeued
            ch.basic_qos(prefetch_count=qos)
            on_message = functools.partial(self._on_message, ch, gen, queue)
            if fut is not None:
                self._waiting.add(fut)

            def ok(_frame: Any) -> None:
                if fut is not None:
                    self._waiting.discard(fut)
                    if not fut.done():
                        fut.set_result(True)

            self._consumer_tags[queue] = ch.basic_consume(queue, on_message, callback=ok)

        holder: Future[Any] = fut if fut is not None else Future()
        if fut is None:
            holder.add_done_callback(log_failure(f"re-subscribing to {queue}"))
        self._publisher.declare(self._queues.declarations(queue), holder, consume)

    def _on_message(self, ch: Any, gen: int, queue: str, _ch: Any, method: Any, props: Any, body: bytes) -> None:
        if ch is not self.channel:
            return
        self._inbox.put(Delivery(body, queue, (gen, method.delivery_tag, props.priority), bool(method.redelivered)))

    def _on_consumer_cancelled(self, frame: Any) -> None:
        # the server cancelled a consumer (its queue was deleted): forget it; the next fetch re-subscribes
        tag = frame.method.consumer_tag
        for queue, t in list(self._consumer_tags.items()):
            if t == tag:
                del self._consumer_tags[queue]
                self._publisher.forget_declared(queue)
                self._inbox.unsubscribe(queue)
                log.warning("RabbitMQ cancelled the consumer of %s (queue deleted?)", queue)

    def settle(self, deliveries: Sequence[Delivery], requeue: bool, fut: Future[Any]) -> None:
        """Ack (or nack with requeue) the deliveries of the current channel; ``fut`` gets their count."""
        ch, gen = self.channel, self.gen
        n = 0
        for d in deliveries:
            dgen, tag, _ = d.tag
            if dgen != gen:
                continue  # from a dead channel: RabbitMQ redelivers it anyway
            if requeue:
                ch.basic_nack(tag, requeue=True)
            else:
                ch.basic_ack(tag)
            n += 1
        fut.set_result(n)

    def requeue_later(self, deliveries: Sequence[Delivery], delay: float, fut: Future[Any]) -> None:
        """Publish copies through a delay queue, then ack the deliveries; ``fut`` gets their count."""
        gen = self.gen
        live = [d for d in deliveries if d.tag[0] == gen]
        if not live:
            fut.set_result(0)
            return
        by_key: dict[tuple[str, int | None], list[Delivery]] = {}
        for d in live:
            by_key.setdefault((d.queue, d.tag[2]), []).append(d)
        pending = [len(by_key)]

        def published(group: list[Delivery], f: Future[Any]) -> None:
            # runs on the I/O thread (confirm callback or channel close)
            if f.exception() is None and self.gen == gen and self.channel is not None:
                for d in group:
                    self.channel.basic_ack(d.tag[1])
            pending[0] -= 1
            if fut.done():
                return
            if f.exception() is not None:
                fut.set_exception(f.exception())  # type: ignore[arg-type]
            elif pending[0] == 0:
                fut.set_result(len(live))

        for (queue, priority), group in by_key.items():
            f: Future[Any] = Future()
            f.add_done_callback(functools.partial(published, group))
            self._publisher.publish(queue, [d.body for d in group], delay, priority, f)
