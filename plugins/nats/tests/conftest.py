from __future__ import annotations

from collections.abc import Iterator

import pytest

from callq_nats.testing import NATS, fresh_prefix


@pytest.fixture
def prefix() -> Iterator[str]:
    with fresh_prefix() as name:
        yield name


@pytest.fixture
def url(prefix: str) -> str:
    return f"{NATS}?prefix={prefix}&ack_wait=3"
