"""The shared key-value store (``callq.state.StateStore``) on Redis strings.

Keys live under ``<prefix>:state:``; TTLs are Redis's own (PX), so expiry needs no sweeping.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis

if TYPE_CHECKING:
    from .client import RetryingClient

_INCR = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], ARGV[1])
  if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
  return tonumber(ARGV[1])
end
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisState:
    def __init__(self, client: redis.Redis, rc: RetryingClient, prefix: str) -> None:
        self.client = client
        self.rc = rc
        self.ns = f"{prefix}:state:"
        self._incr = client.register_script(_INCR)

    def put(self, key: str, value: str, ttl: float | None = None, only_new: bool = False) -> bool:
        px = max(1, int(ttl * 1000)) if ttl is not None else None
        k = self.ns + key
        return bool(self.rc.call("state put", lambda: self.client.set(k, value, px=px, nx=only_new)))

    def get(self, key: str) -> str | None:
        value = self.rc.call("state get", lambda: self.client.get(self.ns + key))
        return value.decode() if isinstance(value, bytes) else value

    def delete(self, key: str) -> bool:
        return bool(self.rc.call("state delete", lambda: self.client.delete(self.ns + key)))

    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        px = max(1, int(ttl * 1000)) if ttl is not None else 0
        return int(self.rc.call("state incr", lambda: self._incr(keys=[self.ns + key], args=[amount, px])))

    def scan(self, prefix: str) -> dict[str, str]:
        """Every key under ``prefix`` (on every primary of a cluster)."""
        pattern = _glob_escape(self.ns + prefix) + "*"

        def run() -> dict[str, str]:
            keys = list(self.client.scan_iter(match=pattern, count=500))
            if not keys:
                return {}
            # a cluster spreads them over shards: one MGET per slot there
            mget = getattr(self.client, "mget_nonatomic", self.client.mget)
            values = mget(keys)
            cut = len(self.ns)
            return {k.decode()[cut:]: v.decode() for k, v in zip(keys, values) if v is not None}

        return self.rc.call("state scan", run)


class SharedStateMixin:
    """``callq_state_store`` for a broker with ``client``, ``rc`` and ``prefix`` attributes."""

    client: redis.Redis
    rc: RetryingClient
    prefix: str
    _state: RedisState | None = None

    def callq_state_store(self) -> RedisState:
        if self._state is None:
            self._state = RedisState(self.client, self.rc, self.prefix)
        return self._state
