"""Test helpers for code that uses callq-redis: a private key prefix, removed afterwards."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import redis

REDIS = "redis://127.0.0.1:6379/0"


@contextlib.contextmanager
def fresh_prefix(url: str = REDIS) -> Iterator[str]:
    """A unique key prefix for one test; every key under it is deleted on exit."""
    name = f"cqtest-{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        client = redis.Redis.from_url(url)
        try:
            keys = list(client.scan_iter(match=f"{name}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()
