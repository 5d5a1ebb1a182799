"""The JetStream side of the broker, run on its loop thread: per queue a stream and the durable
pull consumer every worker shares (created on first use), publish, pull fetch, size and purge."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from callq.errors import ConfigError
from callq.url import BrokerURL

from . import names
from .large import LargeBodies

log = logging.getLogger("callq.nats")

DURABLE = "callq"
#: room left for headers when deciding whether a body fits in one message
HEADER_ROOM = 1024


class Streams:
    """Coroutines and their state; used from the loop thread only."""

    def __init__(self, nc: nats.NATS, js: JetStreamContext, large: LargeBodies, url: BrokerURL, *,
                 prefix: str, ack_wait: float, max_ack_pending: int, replicas: int) -> None:
        self.nc = nc
        self.js = js
        self.large = large
        self.url = url  # for messages
        self.prefix = prefix
        self.ack_wait = ack_wait
        self.max_ack_pending = max_ack_pending
        self.replicas = replicas
        self._ready: set[str] = set()  # streams known to exist, with their consumer
        self._subs: dict[str, Any] = {}  # queue -> pull subscription
        self._fetch_locks: dict[str, asyncio.Lock] = {}
        self._leftovers: dict[str, deque[Msg]] = {}

    # --- streams and consumers --------------------------------------------------------------

    async def ensure(self, queue: str) -> str:
        stream = names.stream_name(self.prefix, queue)
        if stream in self._ready:
            return stream
        config = api.StreamConfig(
            name=stream, subjects=[names.subject(self.prefix, queue)], retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE, num_replicas=self.replicas, duplicate_window=120.0,
        )
        try:
            await self.js.add_stream(config)
        except nats.js.errors.BadRequestError:
            info = await self.js.stream_info(stream)  # exists with other settings: usable if a work queue
            if info.config.retention != api.RetentionPolicy.WORK_QUEUE:
                raise ConfigError(f"nats {self.url}: stream {stream} exists and is not a work queue") from None
        consumer = api.ConsumerConfig(
            durable_name=DURABLE, ack_policy=api.AckPolicy.EXPLICIT, ack_wait=self.ack_wait, max_deliver=-1,
            max_ack_pending=self.max_ack_pending, deliver_policy=api.DeliverPolicy.ALL,
        )
        try:
            await self.js.add_consumer(stream, consumer)
        except nats.js.errors.BadRequestError as exc:
            info = await self.js.consumer_info(stream, DURABLE)
            log.warning("nats %s: consumer %s/%s exists with other settings (%s); using it with ack_wait %.0fs",
                        self.url, stream, DURABLE, exc.description, info.config.ack_wait or 0)
        self._ready.add(stream)
        return stream

    async def subscription(self, queue: str) -> Any:
        sub = self._subs.get(queue)
        if sub is None:
            stream = await self.ensure(queue)
            sub = await self.js.pull_subscribe_bind(durable=DURABLE, stream=stream)
            self._subs[queue] = sub
            self._fetch_locks[queue] = asyncio.Lock()
        return sub

    async def forget(self, queue: str) -> None:
        self._ready.discard(names.stream_name(self.prefix, queue))
        sub = self._subs.pop(queue, None)
        if sub is not None:
            try:
                await sub.unsubscribe()
            except nats.errors.Error:
                pass

    # --- publish and fetch ------------------------------------------------------------------

    async def publish(self, queue: str, items: list[tuple[str, bytes]]) -> None:
        """Publish ``(message id, body)`` pairs; a body too large for one message goes to the object store."""
        await self.ensure(queue)
        subj = names.subject(self.prefix, queue)
        limit = self.nc.max_payload - HEADER_ROOM
        if len(items) == 1 and len(items[0][1]) <= limit:  # one round trip, no futures
            await self.js.publish(subj, items[0][1], headers={api.Header.MSG_ID: items[0][0]})
            return
        futures = []
        for msg_id, body in items:
            headers = {api.Header.MSG_ID: msg_id}
            if len(body) > limit:
                headers.update(await self.large.put(queue, msg_id, body))
                body = b""
            futures.append(await self.js.publish_async(subj, body, headers=headers))
        await asyncio.wait_for(asyncio.gather(*futures), 30.0)

    async def fetch(self, queue: str, max_n: int, timeout: float) -> list[Msg]:
        sub = await self.subscription(queue)
        started = time.monotonic()
        async with self._fetch_locks[queue]:
            ready = self.take_leftovers(queue, sub, max_n)
            if ready:
                return ready
            left = timeout - (time.monotonic() - started)
            try:
                msgs = await sub.fetch(batch=max_n, timeout=max(left, 0.05))
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                return []
            except nats.js.errors.NotFoundError:
                await self.forget(queue)  # stream or consumer deleted under us: recreate next time
                return []
            if len(msgs) > max_n:
                self._leftovers.setdefault(queue, deque()).extend(msgs[max_n:])
            return msgs[:max_n]

    def take_leftovers(self, queue: str, sub: Any, max_n: int) -> list[Msg]:
        """Messages a pull request delivered after its fetch returned (still ours): handed out first."""
        over = self._leftovers.setdefault(queue, deque())
        inner = sub._sub
        pending = inner._pending_queue if inner is not None else None
        while pending is not None and not pending.empty():
            msg = pending.get_nowait()
            inner._pending_size -= len(msg.data)
            if msg.reply and not JetStreamContext.is_status_msg(msg):
                over.append(msg)
        return [over.popleft() for _ in range(min(max_n, len(over)))]

    def take_all_leftovers(self) -> list[Msg]:
        """On close: every leftover of every queue, to give back."""
        leftovers: list[Msg] = []
        for queue, sub in self._subs.items():
            leftovers += self.take_leftovers(queue, sub, 1 << 30)
        return leftovers

    # --- size and purge ---------------------------------------------------------------------

    async def size(self, queue: str) -> int:
        """Waiting messages: those in the stream minus those pending an ack."""
        stream = names.stream_name(self.prefix, queue)
        try:
            info = await self.js.stream_info(stream)
            cinfo = await self.js.consumer_info(stream, DURABLE)
        except nats.js.errors.NotFoundError:
            return 0
        return max(0, info.state.messages - cinfo.num_ack_pending)

    async def purge(self, queue: str) -> int:
        stream = names.stream_name(self.prefix, queue)
        try:
            info = await self.js.stream_info(stream)
            await self.js.purge_stream(stream)
        except nats.js.errors.NotFoundError:
            return 0
        await self.large.drop_queue(queue)
        return int(info.state.messages)
