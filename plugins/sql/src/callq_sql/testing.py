"""Test helpers for code that uses callq-sql: a private table prefix, tables dropped afterwards."""

from __future__ import annotations

import contextlib
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
