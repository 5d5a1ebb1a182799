"""A private database per test on the shared PostgreSQL / MariaDB servers, or a sqlite file."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

PG = "postgresql://postgres@127.0.0.1:5432"
MARIADB = "mariadb://root@127.0.0.1:3306"
KINDS = ("sqlite", "postgresql", "mariadb")


@contextlib.contextmanager
def private_db(kind: str, tmp_path: Path) -> Iterator[str]:
    """Yield a URL of an empty database that is dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'db.sqlite'}"
        return
    import sqlalchemy as sa

    from callq.sqlengine import sqlalchemy_url

    name = f"cq10_{uuid.uuid4().hex[:10]}"
    server = PG if kind == "postgresql" else MARIADB
    admin = sa.create_engine(sqlalchemy_url(server + ("/postgres" if kind == "postgresql" else "/test")),
                             isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        yield f"{server}/{name}"
    finally:
        from callq import sqlengine
        from callq.results import store as result_stores

        for key, opened in list(result_stores._stores.items()):
            if name in key[1]:
                opened.close()
                del result_stores._stores[key]
        for key, engine in list(sqlengine._engines.items()):
            if name in key[1]:
                engine.dispose()
                del sqlengine._engines[key]
        with admin.connect() as conn:
            if kind == "postgresql":
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            else:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()
