"""A ``sqlite:`` URL read and checked: the database file and the parameters (docs/brokers/sqlite.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from callq.errors import ConfigError
from callq.url import BrokerURL

KNOWN_PARAMS = ("lease", "heartbeat", "poll", "busy_timeout", "synchronous")


def database_path(url: BrokerURL) -> str:
    """The absolute file path of a ``sqlite:`` URL (SQLAlchemy's convention).

    ``sqlite:///rel/x.db`` is relative to the current directory, ``sqlite:////abs/x.db``
    is absolute.
    """
    if url.host or url.port:
        raise ConfigError(
            f"broker URL {url}: a sqlite URL has no host; use sqlite:///relative/file.db "
            "or sqlite:////absolute/file.db"
        )
    path = url.path[1:] if url.path.startswith("/") else url.path
    if not path or path == ":memory:" or path.endswith("/"):
        raise ConfigError(
            f"broker URL {url}: name a database file, e.g. sqlite:///callq.db or "
            "sqlite:////var/lib/callq/callq.db (in-memory databases cannot be shared)"
        )
    return os.path.abspath(path)


@dataclass(frozen=True)
class SqliteParams:
    """What a ``sqlite:`` URL asks for; :meth:`from_url` raises ConfigError for a bad one."""

    path: str  # absolute
    lease: float  # seconds a fetched row stays ours without a heartbeat
    heartbeat: float  # seconds between heartbeats, below lease
    poll: float  # longest sleep of a waiting fetch between looks at the file
    busy_timeout: float  # seconds a connection waits for the file's write lock
    synchronous: str  # PRAGMA synchronous: NORMAL or FULL

    @classmethod
    def from_url(cls, url: BrokerURL) -> SqliteParams:
        url.check_params(KNOWN_PARAMS)
        lease = url.float_param("lease", 30.0, minimum=0.0)
        if lease < 0.1:
            raise ConfigError(f"broker URL {url}: parameter lease must be >= 0.1 seconds, got {lease}")
        heartbeat = url.float_param("heartbeat", lease / 3, minimum=0.0)
        if not 0 < heartbeat < lease:
            raise ConfigError(
                f"broker URL {url}: parameter heartbeat must be > 0 and below lease ({lease}), "
                f"got {heartbeat}"
            )
        poll = url.float_param("poll", 0.05, minimum=0.0)
        if poll <= 0:
            raise ConfigError(f"broker URL {url}: parameter poll must be > 0, got {poll}")
        busy_timeout = url.float_param("busy_timeout", 30.0, minimum=0.0)
        synchronous = url.str_param("synchronous", "normal", choices=("normal", "full")).upper()
        return cls(database_path(url), lease, heartbeat, poll, busy_timeout, synchronous)
