"""SQLAlchemy engines for the SQL result store and call history (``pip install callq[sql]``).

URLs: ``sqlite:///path.db``, ``postgresql://user@host/db`` (psycopg 3), ``mysql://`` or
``mariadb://root@host/db`` (PyMySQL); any SQLAlchemy URL with an explicit driver works too.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from .errors import ConfigError

_engines: dict[tuple[int, str], Any] = {}
_lock = threading.Lock()


def sqlalchemy_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"{url!r} is not a database URL (e.g. sqlite:///history.db)")
    base = scheme.lower()
    if base == "postgresql" or base == "postgres":
        return "postgresql+psycopg://" + rest
    if base in ("mysql", "mariadb"):
        return "mysql+pymysql://" + rest
    return url


def engine_for(url: str) -> Any:
    """The process's shared engine for ``url``."""
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is not None:
        return engine
    try:
        import sqlalchemy as sa
    except ImportError:
        raise ConfigError(f"{url.split('://', 1)[0]}:// stores need SQLAlchemy: pip install 'callq[sql]'") from None
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            target = sqlalchemy_url(url)
            kwargs: dict[str, Any] = {"future": True, "pool_pre_ping": True}
            if target.startswith("sqlite"):
                path = target.split(":///", 1)[1] if ":///" in target else ""
                if path and path != ":memory:":
                    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
            try:
                engine = sa.create_engine(target, **kwargs)
            except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
                raise ConfigError(f"database URL {_mask(url)}: {exc}") from None
            if target.startswith("sqlite"):
                sa.event.listen(engine, "connect", _sqlite_pragmas)
            _engines[key] = engine
    return engine


def _sqlite_pragmas(dbapi_conn: Any, record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _mask(url: str) -> str:
    from .url import BrokerURL

    try:
        return str(BrokerURL.parse(url))
    except ConfigError:
        return url.split("://", 1)[0] + "://..."
