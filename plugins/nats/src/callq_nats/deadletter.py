"""The body sent to ``<queue>.dlq`` for a message delivered too often (same shape as the runner's)."""

from __future__ import annotations

import json
import os
import socket
import time


def dead_letter_body(data: bytes, queue: str, reason: str) -> bytes:
    dead = {"reason": reason, "queue": queue, "at": time.time(), "host": socket.gethostname(), "pid": os.getpid()}
    try:
        payload = json.loads(data)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        meta = payload.get("_callq") if isinstance(payload.get("_callq"), dict) else {}
        payload["_callq"] = {**meta, "dead": dead}
    else:
        payload = {"_callq": {"dead": {**dead, "body": data.decode("utf-8", "replace")}}}
    return json.dumps(payload).encode()
