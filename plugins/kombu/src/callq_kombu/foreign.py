"""Items of a kombu redis queue that kombu did not write (``LPUSH queue 'garbage'``).

kombu's redis transport parses each list item as its JSON envelope; a foreign item makes the
read raise (``Expecting value``, ``KeyError: 'properties'``) after it was popped: the item is
lost and the consumer's connection fails. ``install()`` wraps the transport's ``loads`` so that
such an item becomes an envelope whose body is the item's raw bytes: callq's worker then
dead-letters it with its content. Valid envelopes and kombu's own records (the ``[message,
exchange, routing_key]`` lists of its unacked hash) are returned unchanged.
"""

from __future__ import annotations

import base64
import logging
import threading
import uuid
from typing import Any

log = logging.getLogger("callq.kombu")

_installed = False
_lock = threading.Lock()


def envelope(raw: bytes) -> dict[str, Any]:
    return {
        "body": base64.b64encode(raw).decode(), "content-encoding": "binary",
        "content-type": "application/octet-stream", "headers": {},
        "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": ""}, "priority": 0,
                       "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())},
    }


def install() -> None:
    """Wrap ``kombu.transport.redis.loads`` once per process (only inputs it refuses change)."""
    global _installed
    with _lock:
        if _installed:
            return
        import kombu.transport.redis as transport

        original = transport.loads

        def loads(s: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                value = original(s, *args, **kwargs)
            except ValueError:
                value = None
            else:
                if isinstance(value, dict) and "properties" in value and "body" in value:
                    return value
                if isinstance(value, list) and len(value) == 3:
                    return value  # kombu's own unacked record
            raw = s.encode("utf-8", "surrogateescape") if isinstance(s, str) else bytes(s)
            log.warning("a redis list item kombu did not write (%d bytes) goes to the dead-letter queue", len(raw))
            return envelope(raw)

        transport.loads = loads
        _installed = True
