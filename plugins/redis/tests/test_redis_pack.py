"""The held connection's command packer builds exactly what redis-py's does."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from callq_redis.client import pack
from callq_redis.testing import REDIS


@pytest.fixture
def raw() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS)
    yield client
    client.close()

# arguments around 4,096 bytes cross pack()'s table of length headers
_args = st.lists(st.one_of(st.binary(max_size=64), st.text(max_size=32), st.integers(),
                           st.binary(min_size=4094, max_size=4098)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["EVALSHA", "LPUSH", "SET"]), _args)
def test_pack_matches_redis_py(name: str, args: list[object]) -> None:
    conn = redis.Redis.from_url(REDIS).connection_pool.make_connection()
    assert pack((name, *args)) == b"".join(conn.pack_command(name, *args))


def test_what_pack_leaves_to_redis_py_still_runs(raw: redis.Redis) -> None:
    """A float or a spaced command name goes through redis-py's packer on the held connection."""
    from callq_redis.client import HeldConnection

    held = HeldConnection(raw)
    try:
        assert held.execute("SET", "callq-test:pack", 1.5) == b"OK"
        assert held.execute("CONFIG GET", "maxmemory-policy")
        assert held.execute("GET", "callq-test:pack") == b"1.5"
    finally:
        held.execute("DEL", "callq-test:pack")
        held.close()
