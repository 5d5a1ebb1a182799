"""The tables of one ``table_prefix``, created on first use, with a schema version for migrations.

One table holds every queue (a ``queue`` column) rather than a table per queue: the schema
exists once, a new queue costs nothing (no DDL at run time, no privileges beyond DML), and
the claim index ``(queue, status, priority DESC, id)`` keeps each queue's head one index
range away however many queues and rows the table holds.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.exc import DBAPIError

from callq.errors import BrokerError, ConfigError

log = logging.getLogger("callq.sql")

#: bump when the tables change; ``ensure_schema`` migrates older versions up to it
SCHEMA_VERSION = 1

#: message states
WAITING, CLAIMED, DONE = 0, 1, 2

_MYSQL = ("mysql", "mariadb")
_Body = LargeBinary().with_variant(mysql.LONGBLOB(), *_MYSQL)
_Text = Text().with_variant(mysql.LONGTEXT(), *_MYSQL)
_TABLE_KW = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin",
             "mariadb_engine": "InnoDB", "mariadb_charset": "utf8mb4", "mariadb_collate": "utf8mb4_bin"}


class Tables:
    """``<prefix>messages``, ``<prefix>state`` and ``<prefix>meta``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.metadata = md = MetaData()
        self.messages = Table(
            f"{prefix}messages", md,
            Column("id", BigInteger, primary_key=True, autoincrement=True),
            Column("queue", String(255), nullable=False),
            Column("status", SmallInteger, nullable=False, server_default=text("0")),
            Column("priority", Integer, nullable=False, server_default=text("0")),
            Column("not_before", Double, nullable=False, server_default=text("0")),
            Column("owner", String(100)),
            Column("lease_until", Double),
            Column("deliveries", Integer, nullable=False, server_default=text("0")),
            Column("done_at", Double),
            Column("body", _Body, nullable=False),
            **_TABLE_KW,
        )
        m = self.messages.c
        Index(f"{prefix}claim", m.queue, m.status, m.priority.desc(), m.id)
        Index(f"{prefix}lease", m.status, m.lease_until)
        self.state = Table(
            f"{prefix}state", md,
            Column("k", String(512), primary_key=True),
            Column("v", _Text, nullable=False),
            Column("expires_at", Double),
            **_TABLE_KW,
        )
        Index(f"{prefix}state_exp", self.state.c.expires_at)
        self.meta = Table(
            f"{prefix}meta", md,
            Column("name", String(64), primary_key=True),
            Column("value", String(255), nullable=False),
            **_TABLE_KW,
        )


_ready: set[tuple[str, str]] = set()
_ready_lock = threading.Lock()


def ensure_schema(engine: Engine, tables: Tables, where: str) -> None:
    """Create the tables if missing (several processes may race: retried) and check the version."""
    key = _key(engine, tables.prefix)
    if key in _ready:
        return
    with _ready_lock:
        if key in _ready:
            return
        for attempt in range(4):
            try:
                tables.metadata.create_all(engine, checkfirst=True)
                break
            except DBAPIError as exc:  # another process created them between check and create
                if attempt == 3:
                    raise BrokerError(f"sql {where}: cannot create the tables: {exc.orig}") from exc
                time.sleep(0.1 * (attempt + 1))
        meta = tables.meta.name
        with engine.begin() as conn:
            row = conn.exec_driver_sql(f"SELECT value FROM {meta} WHERE name = 'schema_version'").first()
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.exec_driver_sql(
                            f"INSERT INTO {meta} (name, value) VALUES ('schema_version', '{SCHEMA_VERSION}')")
                except DBAPIError:  # another process wrote it first
                    pass
                version = SCHEMA_VERSION
            else:
                version = int(row[0])
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"sql {where}: the tables with prefix {tables.prefix!r} have schema version {version}, "
                f"newer than this callq-sql understands ({SCHEMA_VERSION}); upgrade callq-sql")
        # version < SCHEMA_VERSION: migrations go here, one step per version, each in a transaction
        _ready.add(key)


def forget_schema(engine: Engine, prefix: str) -> None:
    """After dropping the tables: the next use creates them again."""
    with _ready_lock:
        _ready.discard(_key(engine, prefix))


def _key(engine: Engine, prefix: str) -> tuple[str, str | None, int | None, str | None, str]:
    u = engine.url
    return (u.get_backend_name(), u.host, u.port, u.database, prefix)
