"""The SQLAlchemy engine for a callq URL, and running statements with retries while the server is away."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError

from callq.errors import BrokerError, ConfigError
from callq.url import BrokerURL

log = logging.getLogger("callq.sql")

T = TypeVar("T")

#: bare schemes and the driver they use
DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mysql+pymysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
    "mariadb+pymysql": "mariadb+pymysql",
}
#: query parameters callq reads; any other is handed to the driver (e.g. sslmode, charset)
CALLQ_PARAMS = ("table_prefix", "lease", "poll", "keep_done", "retry", "pool_size", "connect_timeout")
_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}\Z")


def table_prefix(url: BrokerURL) -> str:
    prefix = url.str_param("table_prefix", "callq_")
    if not _PREFIX.match(prefix):
        raise ConfigError(f"broker URL {url}: table_prefix {prefix!r} must be a letter or _ followed by "
                          "letters, digits or _ (at most 40 characters)")
    return prefix


def make_engine(url: BrokerURL, *, pool_size: int, connect_timeout: float) -> Engine:
    driver = DRIVERS.get(url.scheme)
    if driver is None:
        raise ConfigError(f"broker URL {url}: callq-sql handles {', '.join(sorted(DRIVERS))}, not {url.scheme}://")
    if not url.path.strip("/"):
        raise ConfigError(f"broker URL {url}: name the database in the path, e.g. {url.scheme}://host/dbname")
    try:
        sa_url = make_url(url.raw)
    except ArgumentError as exc:
        raise ConfigError(f"broker URL {url}: {exc}") from None
    sa_url = sa_url.set(drivername=driver).difference_update_query(CALLQ_PARAMS)
    connect_args: dict[str, object] = {"connect_timeout": max(1, round(connect_timeout))}
    try:
        return create_engine(
            sa_url, pool_size=pool_size, max_overflow=pool_size * 2, pool_pre_ping=False,
            pool_recycle=1800, isolation_level="READ COMMITTED", connect_args=connect_args,
        )
    except ImportError as exc:
        extra = "postgresql" if driver.startswith("postgresql") else "mysql"
        raise ConfigError(f"broker URL {url}: the driver for {driver} is not installed "
                          f"(pip install 'callq-sql[{extra}]'): {exc}") from None
    except (ArgumentError, TypeError) as exc:
        raise ConfigError(f"broker URL {url}: {exc}") from None


def check_connect(engine: Engine, url: BrokerURL) -> None:
    """Open one connection now: a wrong URL fails the constructor with a clear error, not a retry loop."""
    known = ", ".join(CALLQ_PARAMS)
    try:
        with engine.connect():
            pass
    except TypeError as exc:  # PyMySQL: an unknown keyword argument
        raise ConfigError(f"broker URL {url}: a query parameter is neither callq-sql's ({known}) nor the "
                          f"driver's: {exc}") from None
    except DBAPIError as exc:
        if "invalid connection option" in str(exc.orig):  # libpq
            raise ConfigError(f"broker URL {url}: a query parameter is neither callq-sql's ({known}) nor the "
                              f"driver's: {_cause(exc)}") from None
        raise BrokerError(f"sql {url}: cannot connect: {_cause(exc)}") from exc


def transient(exc: BaseException) -> bool:
    """Connection lost, server restarting, deadlock or lock timeout: worth retrying."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (OperationalError, InterfaceError))


class Runner:
    """Runs database work, retrying transient failures with backoff for up to ``retry_for`` seconds."""

    def __init__(self, url: BrokerURL, retry_for: float) -> None:
        self.url = url
        self.retry_for = retry_for
        self.closed = False
        self.failures = 0

    def call(self, what: str, fn: Callable[[], T], on_error: Callable[[], None] | None = None) -> T:
        deadline = time.monotonic() + self.retry_for
        wait = 0.05
        failures = 0
        while True:
            try:
                result = fn()
            except DBAPIError as exc:
                if not transient(exc):
                    raise BrokerError(f"sql {self.url}: {what} failed: {_cause(exc)}") from exc
                failures += 1
                self.failures += 1
                if on_error is not None:
                    on_error()
                if self.closed or time.monotonic() + wait > deadline:
                    raise BrokerError(f"sql {self.url}: {what} failed: {_cause(exc)}") from exc
                log.warning("sql %s: %s failed (%s); retrying in %.2fs", self.url, what, _cause(exc), wait)
                time.sleep(wait)
                wait = min(wait * 2, 2.0)
                continue
            if failures:
                log.warning("sql %s: %s succeeded again after %d failure(s)", self.url, what, failures)
            return result


def _cause(exc: DBAPIError) -> str:
    orig = exc.orig if exc.orig is not None else exc
    return f"{type(orig).__name__}: {str(orig).strip().splitlines()[0] if str(orig).strip() else ''}"
