"""pika's failures as callq errors and log lines."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pika.exceptions

from callq.errors import BrokerError, ConfigError
from callq.url import BrokerURL

log = logging.getLogger("callq.rabbitmq")


def describe_error(exc: BaseException) -> str:
    """The innermost useful text of a pika error (pika nests the socket error two levels deep)."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    found: list[BaseException] = []
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        found.append(e)
        if isinstance(e, OSError) and e.strerror:
            return e.strerror[:1].lower() + e.strerror[1:]
        nested = [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]
        nested += [a for a in getattr(e, "exceptions", ()) or () if isinstance(a, BaseException)]
        for attr in ("exception", "__cause__", "__context__"):
            inner = getattr(e, attr, None)
            if isinstance(inner, BaseException):
                nested.append(inner)
        stack.extend(reversed(nested))
    for e in found:
        text = str(e).strip()
        if text and text != "None":
            return f"{type(e).__name__}: {text}"
    return type(exc).__name__


def channel_error(reason: BaseException, url: BrokerURL) -> BaseException:
    """The error for the callers of a closed channel: ConfigError when RabbitMQ refused a queue's arguments."""
    if isinstance(reason, pika.exceptions.ChannelClosedByBroker):
        if reason.reply_code == 406:
            return ConfigError(
                f"RabbitMQ refused an operation on {url}: {reason.reply_text}. A queue's arguments are fixed when "
                "it is created: use the same queue_type, delivery_limit, max_priority and queue_expires as "
                "whoever declared it, "
                "or delete the queue")
        return BrokerError(f"RabbitMQ closed the channel on {url}: {reason.reply_code} {reason.reply_text}")
    return BrokerError(f"RabbitMQ channel on {url} closed: {reason!r}")


def log_failure(what: str) -> Callable[[Future[Any]], None]:
    """A done-callback logging a future's failure (for work no caller waits on)."""
    def check(fut: Future[Any]) -> None:
        if fut.exception() is not None:
            log.warning("%s failed: %s", what, fut.exception())
    return check
