"""The ``kafka://`` URL: bootstrap hosts, protocol version, topic names."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from callq.errors import ConfigError
from callq.url import BrokerURL

_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+)(:\d{1,5})?$")


def parse_hosts(url: BrokerURL) -> list[str]:
    """Bootstrap servers: the URL's host(s) plus ``?bootstrap=h2:9092,h3:9092`` (port 9092 by default).

    ``kafka://h1,h2:9092/`` works too, but callq's URL parser refuses a port on every host of a
    comma list, hence the ``bootstrap`` parameter.
    """
    netloc = urlsplit(url.raw).netloc
    if "@" in netloc:
        raise ConfigError(f"broker URL {url}: callq-kafka takes no user or password (PLAINTEXT listeners only)")
    parts = netloc.split(",")
    if netloc and not re.search(r":\d+$", parts[-1]):
        parts[-1] += ":9092"
    port = parts[-1].rsplit(":", 1)[1] if netloc else "9092"
    extra = url.query.get("bootstrap", "")
    hosts = []
    for part in [*parts, *extra.split(",")]:
        part = part.strip()
        if not part:
            continue
        if not _HOST.match(part):
            raise ConfigError(f"broker URL {url}: bad bootstrap host {part!r}; expected host:port")
        if not re.search(r":\d+$", part) or part.endswith("]"):
            part += f":{port}"
        if not 0 < int(part.rsplit(":", 1)[1]) < 65536:
            raise ConfigError(f"broker URL {url}: bad port in {part!r}")
        hosts.append(part)
    return hosts or ["localhost:9092"]


def parse_api_version(url: BrokerURL) -> tuple[int, ...] | None:
    raw = url.query.get("api_version", "auto")
    if raw == "auto":
        return None
    try:
        version = tuple(int(x) for x in raw.split("."))
    except ValueError:
        version = ()
    if not 1 < len(version) < 4:
        raise ConfigError(f"broker URL {url}: api_version={raw!r} must be 'auto' or a version like 0.9 or 2.8")
    return version


def topic_for(queue: str) -> str:
    if not _TOPIC.match(queue):
        raise ConfigError(f"queue name {queue!r} is not a valid Kafka topic name "
                          "(letters, digits, '.', '_', '-'; at most 249)")
    return queue
