"""Test helpers for callq-zeromq."""

from __future__ import annotations

from callq.testing.servers import free_port

__all__ = ["free_port"]
