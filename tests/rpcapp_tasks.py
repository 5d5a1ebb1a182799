"""Tasks for test_results: importable by worker processes (spawn or fork)."""

from __future__ import annotations

import os

import callq

BROKER = os.environ.get("RPCAPP_BROKER", "memory://rpcapp")


@callq.task(os.environ.get("RPCAPP_QUEUE", "rpcapp"), broker=BROKER)
def square(n: int) -> dict:
    return {"n": n * n, "pid": os.getpid()}
