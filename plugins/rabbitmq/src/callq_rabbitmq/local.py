"""A throwaway 3-node RabbitMQ cluster on 127.0.0.1, for tests and benchmarks.

Nodes ``cq<port>a@localhost`` ... of the Debian ``rabbitmq-server`` (``/usr/lib/rabbitmq/bin``,
``CALLQ_RABBITMQ_BIN`` overrides it), each with its own AMQP and distribution port, data and
log directories under one temporary directory, no plugins, and an Erlang cookie of their own
(``HOME`` is that directory), so no other RabbitMQ node on the machine is touched. Only the
processes started here are stopped::

    with local_rabbit_cluster() as cluster:
        cluster.url("/?queue_type=quorum")     # amqp://guest:guest@127.0.0.1:5701/?hosts=...
        cluster.stop(cluster.nodes[0])
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from callq.testing.servers import port_free

BIN = Path(os.environ.get("CALLQ_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))


@dataclass
class Node:
    name: str
    port: int
    dist_port: int
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class LocalRabbitCluster:
    workdir: Path
    nodes: list[Node] = field(default_factory=list)

    def env(self, node: Node | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env.update(HOME=str(self.workdir), RABBITMQ_CONF_ENV_FILE=str(self.workdir / "env.conf"),
                   ERL_EPMD_ADDRESS="127.0.0.1",
                   ERL_CRASH_DUMP=str(self.workdir / "erl_crash.dump"))  # never the caller's cwd
        if node is not None:
            d = self.workdir / node.name.split("@")[0]
            env.update(
                RABBITMQ_NODENAME=node.name, RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
                RABBITMQ_NODE_PORT=str(node.port), RABBITMQ_DIST_PORT=str(node.dist_port),
                RABBITMQ_MNESIA_BASE=str(d / "mnesia"), RABBITMQ_LOG_BASE=str(d / "log"),
                RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"), RABBITMQ_PID_FILE=str(d / "pid"),
                RABBITMQ_ENABLED_PLUGINS_FILE=str(self.workdir / "enabled_plugins"),
                RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
                ERL_CRASH_DUMP=str(d / "erl_crash.dump"),
                # the Erlang distribution listens on loopback only
                RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            )
        return env

    def ctl(self, node: Node, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        res = subprocess.run([str(BIN / "rabbitmqctl"), "-n", node.name, *args], env=self.env(),
                             capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {node.name} {' '.join(args)} failed ({res.returncode}):\n"
                               f"{res.stdout}\n{res.stderr}\n{self.log_tail(node)}")
        return res.stdout

    def log_tail(self, node: Node, lines: int = 20) -> str:
        d = self.workdir / node.name.split("@")[0]
        out = []
        for path in [*sorted((d / "log").glob("*.log")), d / "stdout.log"]:
            if path.exists():
                out.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    def start(self, node: Node) -> None:
        d = self.workdir / node.name.split("@")[0]
        d.mkdir(parents=True, exist_ok=True)
        (d / "rabbitmq.conf").write_text(f"listeners.tcp.1 = 127.0.0.1:{node.port}\n")
        out = open(d / "stdout.log", "ab")  # noqa: SIM115 - handed to the child
        node.proc = subprocess.Popen([str(BIN / "rabbitmq-server")], env=self.env(node), stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True, cwd=d)

    def await_up(self, node: Node, timeout: float = 90.0) -> None:
        """Until the node runs its RabbitMQ application (it must first show up in epmd)."""
        deadline = time.monotonic() + timeout
        while True:
            if node.proc is None or node.proc.poll() is not None:
                raise RuntimeError(f"RabbitMQ node {node.name} exited:\n{self.log_tail(node)}")
            out = subprocess.run([str(BIN / "rabbitmqctl"), "-n", node.name, "await_startup", "--timeout", "30"],
                                 env=self.env(), capture_output=True, text=True, timeout=45)
            if out.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"RabbitMQ node {node.name} not up after {timeout}s:\n{out.stderr[-2000:]}\n"
                                   f"{self.log_tail(node)}")
            time.sleep(0.5)

    def stop(self, node: Node) -> None:
        """Stop one node cleanly (rabbitmqctl stop); killed if it does not go within 30 s."""
        if node.proc is None or node.proc.poll() is not None:
            return
        self.ctl(node, "stop", check=False, timeout=40)
        try:
            node.proc.wait(30)
        except subprocess.TimeoutExpired:
            self._kill(node)

    def kill(self, node: Node) -> None:
        """kill -9 of one node (its whole process group: this module started it in its own session)."""
        self._kill(node)

    def _kill(self, node: Node) -> None:
        if node.proc is not None and node.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.proc.pid, signal.SIGKILL)  # its own session: our node only
            node.proc.wait(10)

    def url(self, query: str = "", *, first: int = 0) -> str:
        """amqp URL of node ``first`` with the others in ``hosts`` (to reconnect to)."""
        order = self.nodes[first:] + self.nodes[:first]
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in order[1:])
        sep = "&" if query else ""
        return f"amqp://guest:guest@127.0.0.1:{order[0].port}/?hosts={hosts}{sep}{query.lstrip('?')}"

    def close(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                self.stop(node)
            self._kill(node)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _ports(start: int) -> list[int]:
    base = start
    while base < start + 500:
        ports = [base, base + 1, base + 2]
        if all(port_free(p) and port_free(p + 20000) for p in ports):
            return ports
        base += 3
    raise RuntimeError(f"no free ports from {start}")


@contextlib.contextmanager
def local_rabbit_cluster(start_port: int = 5701) -> Iterator[LocalRabbitCluster]:
    """Three nodes joined into one cluster; stopped (and their directory removed) on exit."""
    work = Path(tempfile.mkdtemp(prefix="callq-rabbit-"))
    cookie = work / ".erlang.cookie"
    cookie.write_text(secrets.token_hex(16).upper())
    cookie.chmod(0o400)
    (work / "enabled_plugins").write_text("[].\n")
    (work / "env.conf").write_text("")
    cluster = LocalRabbitCluster(work)
    ports = _ports(start_port)
    cluster.nodes = [Node(f"cq{p}@localhost", p, p + 20000) for p in ports]
    try:
        for node in cluster.nodes:
            cluster.start(node)
        for node in cluster.nodes:
            cluster.await_up(node)
        for node in cluster.nodes[1:]:
            cluster.ctl(node, "stop_app")
            cluster.ctl(node, "join_cluster", cluster.nodes[0].name)
            cluster.ctl(node, "start_app")
        deadline = time.monotonic() + 30
        while True:
            status = cluster.ctl(cluster.nodes[0], "cluster_status", "--formatter", "json")
            if len(json.loads(status).get("running_nodes", [])) == 3:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"RabbitMQ nodes did not form a cluster:\n{status}")
            time.sleep(0.5)
        yield cluster
    finally:
        cluster.close()
