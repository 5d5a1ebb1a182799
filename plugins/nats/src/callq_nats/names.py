"""Queue names to JetStream stream names and subjects (both reversible, no collisions)."""

from __future__ import annotations

import re

_SAFE = re.compile(r"[A-Za-z0-9-]")
PREFIX = re.compile(r"[A-Za-z0-9-]{1,32}\Z")


def encode(queue: str) -> str:
    """Keep letters, digits and '-'; every other character becomes ``_xx`` (its UTF-8 bytes in hex)."""
    if not queue:
        raise ValueError("empty queue name")
    return "".join(c if _SAFE.match(c) else "".join(f"_{b:02x}" for b in c.encode()) for c in queue)


def stream_name(prefix: str, queue: str) -> str:
    return f"{prefix}_{encode(queue)}"


def subject(prefix: str, queue: str) -> str:
    return f"{prefix}.{encode(queue)}"


def big_bucket(prefix: str, queue: str) -> str:
    """The object store bucket holding this queue's bodies too large for one NATS message."""
    return f"{prefix}_big_{encode(queue)}"
