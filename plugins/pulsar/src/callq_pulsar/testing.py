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
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

#: log file of every pulsar-lite started here and still running, by its URL
SERVER_LOGS: dict[str, Path] = {}

#: the server's keep-alive ping interval and liveness timeout used by the tests (seconds):
#: a consumer that stops answering (SIGSTOP, network cut) is dropped about 2x this after
TEST_KEEPALIVE = 2


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    log = open(log_path, "wb")
    db = data_dir or workdir / "data"
    cmd = [pulsar_lite_binary(), "--config", str(config), "--addr", f"127.0.0.1:{port}",
           "--db-path", str(db), "--log-level", "warn"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        _wait_until_answers(proc, port, startup_timeout, log_path)
        url = f"pulsar://127.0.0.1:{port}"
        SERVER_LOGS[url] = log_path
        yield url
    finally:
        SERVER_LOGS.pop(f"pulsar://127.0.0.1:{port}", None)
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_until_answers(proc: subprocess.Popen[bytes], port: int, timeout: float, log_path: Path) -> None:
    import pulsar

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                pass
            client = pulsar.Client(f"pulsar://127.0.0.1:{port}", operation_timeout_seconds=3,
                                   connection_timeout_ms=1000, logger=logging.getLogger("callq.pulsar.client"))
            try:
                client.get_topic_partitions("persistent://public/default/callq-ping")
                return
            finally:
                client.close()
        except Exception as exc:  # noqa: BLE001 - not up yet
            last = exc
            time.sleep(0.1)
    text = log_path.read_text(errors="replace")[-5000:] if log_path.exists() else ""
    state = f"exited with {proc.returncode}" if proc.poll() is not None else "did not answer"
    raise RuntimeError(f"pulsar-lite {state} within {timeout:.0f}s on 127.0.0.1:{port} "
                       f"(last error: {last}); its log:\n{text}")


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
