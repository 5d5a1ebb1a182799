"""Shared fixtures: both servers, a private table prefix per test (tables dropped afterwards)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from callq_sql.testing import MARIADB, POSTGRES, fresh_prefix

SERVERS = {"postgresql": POSTGRES, "mariadb": MARIADB}


@pytest.fixture(params=sorted(SERVERS))
def server(request: pytest.FixtureRequest) -> str:
    return SERVERS[request.param]


@pytest.fixture
def prefix(server: str) -> Iterator[str]:
    with fresh_prefix(server) as name:
        yield name
