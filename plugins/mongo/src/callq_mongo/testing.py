"""Test helpers: start a throwaway MongoDB-protocol server (SecantusDB) and private databases.

SecantusDB (PyPI ``SecantusDB``, GPL, beta) is a reimplementation of the MongoDB wire protocol;
it is installed by the project's requirements-test.txt only and is never a dependency of
callq-mongo. ``CALLQ_MONGO_URL`` points the tests at another server (a real mongod) instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pymongo

from callq.testing import servers
from callq.testing.servers import free_port as free_port


def _secantus_command() -> list[str]:
    exe = Path(sys.executable).with_name("secantusd-py")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("secantusd-py")
    if found:
        return [found]
    raise RuntimeError("secantusd-py not found: install the test requirements "
                       "(pip install -r requirements-test.txt, which pins SecantusDB)")


@contextlib.contextmanager
def secantus_server(startup_timeout: float = 60.0, data_dir: Path | None = None,
                    port: int | None = None) -> Iterator[str]:
    """Start SecantusDB on 127.0.0.1 (free port, temp data dir); yield its URL; stop it after.

    A server that does not answer within ``startup_timeout`` raises RuntimeError with its log.
    Pass ``data_dir`` and ``port`` to start it again on the same data (restart tests).
    """
    workdir = Path(tempfile.mkdtemp(prefix="callq-secantus-"))
    config = workdir / "secantusd.toml"
    config.write_text("")  # an explicit (empty) config: no auto-discovery of ~/.secantus
    port = port or free_port()
    log_path = workdir / "server.log"
    cmd = [*_secantus_command(), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
           "--storage-path", str(data_dir or workdir / "data"), "--log-level", "WARNING"]
    proc = servers.spawn(cmd, log_path, workdir)
    url = f"mongodb://127.0.0.1:{port}/"
    try:
        servers.wait_until(lambda: _pings(url), [proc], f"SecantusDB at {url}", startup_timeout,
                           lambda: servers.log_tail(log_path), pause=0.2)
        yield url
    finally:
        servers.stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def _pings(url: str) -> bool:
    client: pymongo.MongoClient = pymongo.MongoClient(url, serverSelectionTimeoutMS=500, connectTimeoutMS=500)
    try:
        client.admin.command("ping")
        return True
    finally:
        client.close()


@contextlib.contextmanager
def mongo_url() -> Iterator[str]:
    """``CALLQ_MONGO_URL`` if set (an existing server), else a SecantusDB started for the run."""
    existing = os.environ.get("CALLQ_MONGO_URL")
    if existing:
        yield existing
        return
    with secantus_server() as url:
        yield url


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A broker URL on a private database of ``server_url``, dropped on exit."""
    name = f"cqtest_{uuid.uuid4().hex[:10]}"
    base = server_url.split("?")[0].rstrip("/")
    try:
        yield f"{base}/{name}"
    finally:
        client: pymongo.MongoClient = pymongo.MongoClient(base + "/", serverSelectionTimeoutMS=5000)
        try:
            client.drop_database(name)
        finally:
            client.close()
