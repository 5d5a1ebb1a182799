"""Test helpers for code that uses callq-sql: a private table prefix, tables dropped afterwards."""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Iterator

from sqlalchemy import create_engine, text

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
MARIADB = "mysql://root@127.0.0.1:3306/test"
_SA = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql", "mariadb": "mariadb+pymysql"}


def sqlalchemy_url(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{_SA.get(scheme, scheme)}://{rest.split('?', 1)[0]}"


def drop_tables(url: str, prefix: str) -> None:
    engine = create_engine(sqlalchemy_url(url))
    try:
        with engine.begin() as conn:
            for name in ("messages", "state", "meta"):
                conn.execute(text(f"DROP TABLE IF EXISTS {prefix}{name}"))
    finally:
        engine.dispose()
    from .schema import forget_schema

    forget_schema(create_engine(sqlalchemy_url(url)), prefix)


@contextlib.contextmanager
def fresh_prefix(url: str) -> Iterator[str]:
    """A unique table prefix for one test; its tables are dropped on exit."""
    prefix = f"cqt_{uuid.uuid4().hex[:10]}_"
    try:
        yield prefix
    finally:
        drop_tables(url, prefix)


def answers(url: str) -> bool:
    """Whether the server of ``url`` accepts a connection and a query now."""
    engine = create_engine(sqlalchemy_url(url), connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001
        return False
    finally:
        engine.dispose()


def _pg_cluster() -> list[str]:
    version = subprocess.run(["ls", "/etc/postgresql"], capture_output=True, text=True, check=True).stdout.split()[0]
    return ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]


def start_server(url: str) -> None:
    """Start this machine's PostgreSQL or MariaDB (installed as Debian packages)."""
    if url.startswith("postgresql"):
        subprocess.run([*_pg_cluster(), "start"], capture_output=True, timeout=60, check=False)
    else:
        subprocess.run(["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", "/usr/sbin/mariadbd"],
                       capture_output=True, timeout=60, check=False)


def stop_server(url: str) -> None:
    if url.startswith("postgresql"):
        subprocess.run([*_pg_cluster(), "stop", "-m", "fast"], capture_output=True, timeout=60, check=True)
    else:
        subprocess.run(["mysqladmin", "-h", "127.0.0.1", "-u", "root", "shutdown"],
                       capture_output=True, timeout=60, check=True)
    deadline = time.monotonic() + 30
    while answers(url) and time.monotonic() < deadline:
        time.sleep(0.1)


def ensure_running(url: str, timeout: float = 60.0) -> None:
    """Start the server if it does not answer, and wait until it does (AssertionError otherwise)."""
    if answers(url):
        return
    start_server(url)
    deadline = time.monotonic() + timeout
    while not answers(url):
        if time.monotonic() > deadline:
            raise AssertionError(f"the server of {url} does not answer {timeout:.0f}s after being started")
        time.sleep(0.2)
