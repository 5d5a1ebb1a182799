"""One Redis, a Redis Cluster or a Sentinel-managed primary: the client for a broker URL.

Schemes (the ``+stream`` brokers use the same forms with ``redis+stream`` in front)::

    redis://host:6379/0                      one server
    redis+cluster://host:7000/?hosts=h2:7001,h3:7002       Redis Cluster (seed nodes)
    redis+sentinel://host:26379/mymaster/0?hosts=h2:26379  primary named by Sentinel

The URL's host and the ``hosts`` parameter are the seed nodes (cluster) or the sentinels.
(A comma-separated host list in the URL itself is refused by callq's URL parser, so the
other seeds go in ``hosts``.) User and password in the URL are the data nodes'; a
sentinel that needs its own password takes ``sentinel_password``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import AskError, MovedError, RedisClusterException, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel

from callq.errors import BrokerError, ConfigError
from callq.url import BrokerURL

#: URL parameters read here (the brokers add them to their known parameters)
TOPOLOGY_PARAMS = ("hosts", "sentinel_password", "wait", "wait_timeout")
KINDS = ("single", "cluster", "sentinel")


def topology_of(scheme: str) -> str:
    """``single``, ``cluster`` or ``sentinel`` from the last ``+`` part of the scheme."""
    last = scheme.rsplit("+", 1)[-1]
    return last if last in ("cluster", "sentinel") else "single"


def is_tls(scheme: str) -> bool:
    return scheme.split("+", 1)[0] == "rediss"


def seed_hosts(url: BrokerURL, default_port: int) -> list[tuple[str, int]]:
    """The URL's host:port followed by those of the ``hosts`` parameter."""
    seeds = [(url.host or "localhost", url.port or default_port)]
    for item in url.query.get("hosts", "").split(","):
        item = item.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"broker URL {url}: hosts must be host:port,host:port,... got {item!r}")
        seeds.append((host.strip("[]"), int(port)))
    return seeds


@dataclass
class RedisTarget:
    """The client of a broker and what it needs to know about where it points."""

    client: Any  # redis.Redis, or redis.cluster.RedisCluster
    kind: str
    wait_replicas: int  # WAIT for this many replicas after each publish (0: do not wait)
    wait_timeout_ms: int
    sentinel: Sentinel | None = None

    @property
    def cluster(self) -> bool:
        return self.kind == "cluster"

    def close(self) -> None:
        self.client.close()
        pool = getattr(self.client, "connection_pool", None)
        if pool is not None:
            pool.disconnect()
        if self.sentinel is not None:
            for s in self.sentinel.sentinels:
                s.close()
                s.connection_pool.disconnect()

    def write_and_wait(self, key: str, build: Callable[[Any], None]) -> list[Any]:
        """Run ``build(pipe)``'s commands on ``key``'s primary, then ``WAIT`` on the same connection.

        Raises BrokerError if fewer replicas than asked acknowledged in time: the write is on
        the primary, but a failover before it reaches a replica loses it.
        """
        if self.cluster:
            node = self.client.get_node_from_key(key)
            pipe = self.client.get_redis_connection(node).pipeline(transaction=False)
        else:
            pipe = self.client.pipeline(transaction=False)
        build(pipe)
        pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
        try:
            res = pipe.execute()
        except (MovedError, AskError) as exc:  # the slot moved (failover): nothing was written
            self.client.nodes_manager.initialize()
            raise TryAgainError(f"slot of {key} moved: {exc}") from exc
        except (RedisConnectionError, RedisTimeoutError):
            if self.cluster:  # this bypassed RedisCluster's own handling: read the slot map again
                with contextlib.suppress(RedisError, RedisClusterException):
                    self.client.nodes_manager.initialize()
            raise
        acked = int(res[-1])
        if acked < self.wait_replicas:
            raise BrokerError(
                f"redis: write to {key} is on the primary but only {acked} of {self.wait_replicas} "
                f"replica(s) acknowledged it within {self.wait_timeout_ms} ms; a failover now would lose it")
        return res[:-1]


def open_target(url: BrokerURL, *, socket_timeout: float) -> RedisTarget:
    """The client for ``url`` (its own query parameters removed); no hidden retries."""
    base = url.scheme.split("+", 1)[0]
    if base not in ("redis", "rediss"):
        raise ConfigError(f"broker URL {url}: scheme must start with redis or rediss")
    kind = topology_of(url.scheme)
    wait = url.int_param("wait", 0, minimum=0)
    wait_timeout = url.float_param("wait_timeout", 1.0, minimum=0.001)
    common: dict[str, Any] = dict(
        username=url.username,
        password=url.password,
        ssl=is_tls(url.scheme),
        socket_timeout=socket_timeout,
        socket_connect_timeout=min(socket_timeout, 5.0),
        socket_keepalive=True,
        # Commands are not retried inside redis-py: a lost reply to a claim must be seen by
        # the broker so the claimed messages can be given back.
        retry=Retry(NoBackoff(), 0),
    )
    path = [p for p in url.path.split("/") if p]
    sentinel = None
    if kind == "cluster":
        if path not in ([], ["0"]):
            raise ConfigError(f"broker URL {url}: Redis Cluster has only database 0, got path {url.path!r}")
        seeds = [ClusterNode(h, p) for h, p in seed_hosts(url, 6379)]
        try:
            client: Any = RedisCluster(startup_nodes=seeds, **common)
        except (RedisClusterException, RedisError) as exc:
            raise BrokerError(f"redis cluster {url}: cannot read the cluster layout from "
                              f"{', '.join(f'{n.host}:{n.port}' for n in seeds)}: {exc}") from exc
    elif kind == "sentinel":
        if not path:
            raise ConfigError(f"broker URL {url}: the path must be /<service name>[/<db>], e.g. /mymaster/0")
        service, db = path[0], _db(url, path[1:])
        sentinel_kwargs = {"socket_timeout": min(socket_timeout, 5.0),
                           "socket_connect_timeout": min(socket_timeout, 5.0)}
        if "sentinel_password" in url.query:
            sentinel_kwargs["password"] = url.query["sentinel_password"]
        sentinel = Sentinel(seed_hosts(url, 26379), sentinel_kwargs=sentinel_kwargs)
        client = sentinel.master_for(service, db=db, retry_on_error=[], health_check_interval=30, **common)
    else:
        if "hosts" in url.query:
            raise ConfigError(f"broker URL {url}: hosts is for redis+cluster:// and redis+sentinel:// URLs")
        client = redis.Redis(host=url.host or "localhost", port=url.port or 6379, db=_db(url, path),
                             retry_on_error=[], health_check_interval=30, **common)
    if kind != "sentinel" and "sentinel_password" in url.query:
        raise ConfigError(f"broker URL {url}: sentinel_password is for redis+sentinel:// URLs")
    return RedisTarget(client, kind, wait, int(wait_timeout * 1000), sentinel)


def _db(url: BrokerURL, path: list[str]) -> int:
    if not path:
        return 0
    if len(path) > 1 or not path[0].isdigit():
        raise ConfigError(f"broker URL {url}: the path must be a database number, got {'/'.join(path)!r}")
    return int(path[0])
