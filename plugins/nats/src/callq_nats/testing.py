"""Test helpers for callq-nats: a private stream prefix (streams deleted afterwards), server control."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import nats

NATS = "nats://127.0.0.1:4222"
START = ["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", "/usr/sbin/nats-server", "--",
         "-a", "127.0.0.1", "-p", "4222", "-js", "-sd", "/var/lib/nats-server", "-l", "/var/log/nats-server.log"]


def delete_streams(prefix: str, url: str = NATS) -> int:
    """Delete every stream (and object store) whose name starts with ``prefix``."""
    async def run() -> int:
        nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
        try:
            js = nc.jetstream()
            n = 0
            for info in await js.streams_info():
                name = info.config.name
                if name.startswith((f"{prefix}_", f"OBJ_{prefix}_")):
                    await js.delete_stream(name)
                    n += 1
            return n
        finally:
            await nc.close()

    return asyncio.run(run())


@contextlib.contextmanager
def fresh_prefix(url: str = NATS) -> Iterator[str]:
    prefix = f"cqt-{uuid.uuid4().hex[:10]}"
    try:
        yield prefix
    finally:
        delete_streams(prefix, url)


def answers(port: int = 4222) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        if s.connect_ex(("127.0.0.1", port)) != 0:
            return False
        try:
            return s.recv(4).startswith(b"INFO")
        except OSError:
            return False


def ensure_running(timeout: float = 30.0) -> None:
    if answers():
        return
    subprocess.run(START, capture_output=True, timeout=30, check=False)
    deadline = time.monotonic() + timeout
    while not answers():
        if time.monotonic() > deadline:
            raise AssertionError("nats-server does not answer on 127.0.0.1:4222 after being started")
        time.sleep(0.1)


def stop_server() -> None:
    subprocess.run(["start-stop-daemon", "--stop", "--oknodo", "--retry", "10", "--exec", "/usr/sbin/nats-server"],
                   capture_output=True, timeout=30, check=True)
