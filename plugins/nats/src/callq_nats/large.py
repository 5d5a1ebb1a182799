"""Bodies larger than the server's ``max_payload``: kept in an object store bucket per queue.

The message then carries only the object's name (header ``Callq-Object``); the consumer loads
the body when it fetches the message and deletes the object when it acks it.
"""

from __future__ import annotations

from typing import Any

import nats.js.errors
from nats.js import JetStreamContext, api

from . import names

HEADER = "Callq-Object"


class LargeBodies:
    """Coroutines, run on the broker's loop thread."""

    def __init__(self, js: JetStreamContext, prefix: str, replicas: int) -> None:
        self.js = js
        self.prefix = prefix
        self.replicas = replicas

    async def _store(self, queue: str, create: bool = False) -> Any:
        bucket = names.big_bucket(self.prefix, queue)
        try:
            return await self.js.object_store(bucket)
        except nats.js.errors.NotFoundError:
            if not create:
                return None
            return await self.js.create_object_store(bucket, config=api.ObjectStoreConfig(
                bucket=bucket, storage=api.StorageType.FILE, replicas=self.replicas))

    async def put(self, queue: str, name: str, body: bytes) -> dict[str, str]:
        """Store ``body``; returns the headers that point the message at it."""
        store = await self._store(queue, create=True)
        await store.put(name, body)
        return {HEADER: name}

    async def load(self, queue: str, name: str) -> bytes | None:
        store = await self._store(queue)
        try:
            return None if store is None else bytes((await store.get(name)).data or b"")
        except nats.js.errors.NotFoundError:
            return None

    async def delete(self, queue: str, name: str) -> None:
        store = await self._store(queue)
        if store is not None:
            try:
                await store.delete(name)
            except nats.js.errors.NotFoundError:
                pass

    async def drop_queue(self, queue: str) -> None:
        """On purge: the bucket of the queue goes with its messages."""
        try:
            await self.js.delete_object_store(names.big_bucket(self.prefix, queue))
        except nats.js.errors.NotFoundError:
            pass


def object_name(headers: dict[str, str] | None) -> str | None:
    return headers.get(HEADER) if headers else None
