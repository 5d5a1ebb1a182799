"""Exceptions a task function may raise, and the framework's own errors."""

from __future__ import annotations


class CallqError(Exception):
    """Base class of callq's own errors."""


class ConfigError(CallqError, ValueError):
    """An option or URL is invalid; the message names the problem."""


class BrokerNotFound(ConfigError):
    """No installed plugin handles the URL's scheme."""


class BrokerError(CallqError):
    """The broker failed; the message says which operation."""


class Retry(Exception):  # noqa: N818 - raised by user code, reads as a verb
    """Raise inside a task to retry it (counts as an attempt).

    ``delay`` overrides the backoff for this retry.
    """

    def __init__(self, reason: str = "", *, delay: float | None = None) -> None:
        super().__init__(reason)
        self.delay = delay


class Requeue(Exception):  # noqa: N818
    """Raise inside a task to put the message back on the queue unchanged.

    Does not count as an attempt. ``delay`` seconds before it is visible again.
    """

    def __init__(self, reason: str = "", *, delay: float = 0.0) -> None:
        super().__init__(reason)
        self.delay = delay


class Reject(Exception):  # noqa: N818
    """Raise inside a task to send the message straight to the dead-letter queue."""
