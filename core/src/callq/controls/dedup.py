"""Dedup: skip a call whose exact arguments already succeeded; never remember failures.

Atomic across workers: before running, a worker claims the arguments' key with a
set-if-absent in the shared store. A second worker seeing the claim of another message puts
its message back for a while (the first may still fail); seeing a success, it skips. A
message redelivered after its worker died finds its own claim and takes it over.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from ..context import CallContext
from ..options import TaskOptions
from . import Control, Defer, Skip

log = logging.getLogger("callq.worker")

CLAIM_TTL = 600.0  # a claim outlives a crashed worker at most this long
RETRY_DUPLICATE = 1.0  # a duplicate of a running call comes back after this many seconds
_STASH = "callq.dedup"


def dedup_key(queue: str, kwargs: dict[str, Any]) -> str:
    """The same for equal arguments whatever the key order, nested dicts included."""
    canonical = json.dumps(kwargs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"callq:dedup:{queue}:{hashlib.sha256(canonical.encode()).hexdigest()}"


class Dedup(Control):
    name = "dedup"
    order = 200

    @classmethod
    def applies(cls, task_options: TaskOptions, options: Any) -> bool:
        return task_options.dedup

    def start(self) -> None:
        self.store = self.consumer.state
        timeout = self.consumer.options.timeout
        self.claim_ttl = max(CLAIM_TTL, 2 * timeout) if timeout else CLAIM_TTL

    def enter(self, call: CallContext) -> None:
        key = dedup_key(self.consumer.queue, call.kwargs)
        mine = f"run:{call.id or ''}"
        try:
            if not self.store.put(key, mine, ttl=self.claim_ttl, only_new=True):
                seen = self.store.get(key)
                if seen is not None and seen.startswith("done"):
                    raise Skip("the same arguments already succeeded")
                if seen is not None and seen != mine:
                    raise Defer("a call with the same arguments is running", delay=RETRY_DUPLICATE)
                self.store.put(key, mine, ttl=self.claim_ttl)  # our own claim, from before a crash
        except (Skip, Defer):
            raise
        except Exception as exc:  # noqa: BLE001 - run it rather than lose it
            log.warning("dedup lookup failed (%s: %s); running the call", type(exc).__name__, exc)
            return
        call.stash[_STASH] = key

    def settled(self, call: CallContext) -> None:
        key = call.stash.get(_STASH)
        if key is None:
            return
        if call.outcome == "done":
            self.store.put(key, f"done:{call.id or ''}", ttl=self.consumer.options.dedup_ttl)
        else:
            self.store.delete(key)  # failures are never remembered
