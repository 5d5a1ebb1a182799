"""Test helpers: start a throwaway Pulsar-protocol server (pulsar-lite) for tests and benches.

pulsar-lite (PyPI ``pulsar-lite``) is a reimplementation of the Pulsar binary protocol in Rust,
not Apache Pulsar; the project's requirements-test.txt installs it. Its Prometheus endpoint
would listen on 0.0.0.0:8080; the config written here turns it off, so several instances
(tests and a bench) can run at once without touching port 8080. ``CALLQ_PULSAR_URL`` points the
tests at another server (a real Apache Pulsar) instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from callq.testing import servers
from callq.testing.servers import free_port as free_port

#: log file of every pulsar-lite started here and still running, by its URL
SERVER_LOGS: dict[str, Path] = {}

#: the server's keep-alive ping interval and liveness timeout used by the tests (seconds):
#: a consumer that stops answering (SIGSTOP, network cut) is dropped about 2x this after
TEST_KEEPALIVE = 2


def pulsar_lite_binary() -> str:
    try:
        from pulsar_lite.binary_finder import find_pulsar_lite_binary
    except ImportError:
        raise RuntimeError("pulsar-lite is not installed: install the test requirements "
                           "(pip install -r requirements-test.txt, which pins pulsar-lite)") from None
    return find_pulsar_lite_binary()


@contextlib.contextmanager
def pulsar_lite_server(keepalive: int = TEST_KEEPALIVE, startup_timeout: float = 30.0,
                       data_dir: Path | None = None, port: int | None = None) -> Iterator[str]:
    """Start pulsar-lite on 127.0.0.1 (free port, temp data dir); yield its URL; stop it after.

    A server that does not answer within ``startup_timeout`` raises RuntimeError with its log.
    Pass ``data_dir`` and ``port`` to start it again on the same data (restart tests).
    """
    workdir = Path(tempfile.mkdtemp(prefix="callq-pulsar-lite-"))
    config = workdir / "pulsar-lite.toml"
    config.write_text(f"keep_alive_interval_secs = {keepalive}\n"
                      f"connection_liveness_check_timeout_secs = {keepalive}\n"
                      "[metrics]\nenabled = false\n")
    port = port or free_port()
    log_path = workdir / "server.log"
    db = data_dir or workdir / "data"
    cmd = [pulsar_lite_binary(), "--config", str(config), "--addr", f"127.0.0.1:{port}",
           "--db-path", str(db), "--log-level", "warn"]
    proc = servers.spawn(cmd, log_path, workdir)
    url = f"pulsar://127.0.0.1:{port}"
    try:
        servers.wait_until(lambda: _answers(port), [proc], f"pulsar-lite on 127.0.0.1:{port}", startup_timeout,
                           lambda: servers.log_tail(log_path))
        SERVER_LOGS[url] = log_path
        yield url
    finally:
        SERVER_LOGS.pop(url, None)
        servers.stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def _answers(port: int) -> bool:
    import pulsar

    if not servers.answers(port):
        return False
    client = pulsar.Client(f"pulsar://127.0.0.1:{port}", operation_timeout_seconds=3,
                           connection_timeout_ms=1000, logger=logging.getLogger("callq.pulsar.client"))
    try:
        client.get_topic_partitions("persistent://public/default/callq-ping")
        return True
    finally:
        client.close()


@contextlib.contextmanager
def pulsar_url() -> Iterator[str]:
    """``CALLQ_PULSAR_URL`` if set (an existing server), else a pulsar-lite started for the run."""
    existing = os.environ.get("CALLQ_PULSAR_URL")
    if existing:
        yield existing
        return
    with pulsar_lite_server() as url:
        yield url


def stale_consumer_errors(url: str) -> int:
    """How often the pulsar-lite at ``url`` refused a consumer id still held by a dead one."""
    path = SERVER_LOGS.get(url.split("/public/")[0].rstrip("/"))
    if path is None or not path.exists():
        return 0
    return path.read_text(errors="replace").count("already exists")
