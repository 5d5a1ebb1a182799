"""Throwaway Redis Cluster and Sentinel groups on 127.0.0.1, for tests and benchmarks.

Started from the ``redis-server`` binary (``CALLQ_REDIS_SERVER`` overrides it) in a temporary
directory, on free ports, and stopped (SIGKILL of the processes this module started, never
any other) by ``close()``::

    with local_cluster() as cluster:
        url = cluster.url(prefix="x")          # redis+cluster://127.0.0.1:7100/?hosts=...
        cluster.kill(cluster.master_of_key(f"x:{{queue}}:q"))

A server that does not come up raises RuntimeError with the tail of its log.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.cluster import key_slot

from callq.testing.servers import port_free

REDIS_SERVER = os.environ.get("CALLQ_REDIS_SERVER", "redis-server")
REDIS_CLI = os.environ.get("CALLQ_REDIS_CLI", "redis-cli")
#: a replica (re)joining gets its full sync at once, not after the default 5 s wait
FAST_SYNC = ("--repl-diskless-sync-delay", "0")


_LOCK = Path(tempfile.gettempdir()) / "callq-local-redis-ports.lock"
_RESERVED = Path(tempfile.gettempdir()) / "callq-local-redis-ports.json"


@contextlib.contextmanager
def ports_claimed() -> Iterator[None]:
    """Held while ports are picked and reserved: test processes running side by side
    (pytest-xdist) otherwise see the same ports free, or a port free while its server is
    down for a failover test, and collide."""
    with open(_LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _reservations() -> dict[int, int]:
    """port -> pid of the live process that reserved it (call with the lock held)."""
    try:
        raw = json.loads(_RESERVED.read_text())
    except (OSError, ValueError):
        return {}
    return {int(port): pid for port, pid in raw.items() if _alive(pid)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _save(reserved: dict[int, int]) -> None:
    _RESERVED.write_text(json.dumps({str(p): pid for p, pid in reserved.items()}))


def free_ports(count: int, start: int, *, bus: bool = False) -> list[int]:
    """``count`` consecutive free ports from ``start`` on (and their +10000 bus ports if ``bus``),
    reserved for this process until :func:`release_ports`."""
    with ports_claimed():
        reserved = _reservations()
        base = start
        while base + count < 10000 + start:
            ports = list(range(base, base + count))
            if all(p not in reserved and port_free(p) and (not bus or port_free(p + 10000)) for p in ports):
                reserved.update(dict.fromkeys(ports, os.getpid()))
                _save(reserved)
                return ports
            base += count
    raise RuntimeError(f"no {count} free ports from {start}")


def release_ports(ports: list[int]) -> None:
    with ports_claimed():
        reserved = _reservations()
        for port in ports:
            reserved.pop(port, None)
        _save(reserved)


@dataclass
class LocalRedisGroup:
    """Redis processes started here; ``close()`` kills them and removes their directory."""

    workdir: Path
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    args: dict[int, tuple[tuple[str, ...], Path | None]] = field(default_factory=dict)

    def restart(self, port: int) -> None:
        """Start a stopped server again with its first options (it keeps its directory)."""
        args, conf = self.args[port]
        self.start(port, *args, conf=conf)

    def start(self, port: int, *args: str, conf: Path | None = None) -> None:
        self.args[port] = (args, conf)
        d = self.workdir / str(port)
        d.mkdir(parents=True, exist_ok=True)
        cmd = [REDIS_SERVER, *([str(conf)] if conf else []), "--port", str(port), "--bind", "127.0.0.1",
               "--dir", str(d), "--save", "", "--appendonly", "no", "--logfile", str(d / "log"),
               "--daemonize", "no", *args]
        self.procs[port] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.wait_up(port)

    def wait_up(self, port: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[port]
            if proc.poll() is not None:
                break
            try:
                with redis.Redis(port=port, socket_timeout=1) as r:
                    if r.ping():
                        return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {port} did not start; log:\n{self.log_tail(port)}")

    def log_tail(self, port: int, lines: int = 30) -> str:
        path = self.workdir / str(port) / "log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2)

    def kill(self, port: int, sig: int = signal.SIGKILL) -> None:
        """Stop one server of this group abruptly (SIGKILL: no shutdown, no save)."""
        proc = self.procs[port]
        if proc.poll() is None:
            proc.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                proc.wait(10)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)  # a paused one must die too
                    proc.kill()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        shutil.rmtree(self.workdir, ignore_errors=True)
        release_ports(list(self.args))


@dataclass
class LocalCluster(LocalRedisGroup):
    """3 masters + 3 replicas (``redis-cli --cluster create --cluster-replicas 1``)."""

    ports: list[int] = field(default_factory=list)

    def url(self, *, scheme: str = "redis+cluster", **params: object) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports[1:3])
        query = "&".join([f"hosts={hosts}", *(f"{k}={v}" for k, v in params.items())])
        return f"{scheme}://127.0.0.1:{self.ports[0]}/?{query}"

    def nodes(self) -> list[dict[str, object]]:
        """CLUSTER NODES as seen by any live node: port, id, role, master id, flags, slots."""
        for port in self.ports:
            if self.procs[port].poll() is not None:
                continue
            try:
                with self.client(port) as r:
                    text = r.execute_command("CLUSTER", "NODES")
            except redis.RedisError:
                continue
            if isinstance(text, bytes):
                text = text.decode()
            out = []
            for line in text.strip().splitlines():
                parts = line.split()
                flags = parts[2].split(",")
                out.append({"id": parts[0], "port": int(parts[1].split(":")[1].split("@")[0]),
                            "role": "master" if "master" in flags else "replica", "flags": flags,
                            "master": parts[3], "slots": parts[8:]})
            return out
        raise RuntimeError("no cluster node answers")

    def master_of_key(self, key: str) -> int:
        """Port of the master serving ``key``'s slot."""
        slot = key_slot(key.encode())
        for node in self.nodes():
            if node["role"] != "master" or "fail" in node["flags"]:
                continue
            for rng in node["slots"]:  # type: ignore[union-attr]
                lo, _, hi = str(rng).partition("-")
                if not lo.startswith("[") and int(lo) <= slot <= int(hi or lo):
                    return int(node["port"])  # type: ignore[call-overload]
        raise RuntimeError(f"no master serves slot {slot}")

    def replica_of(self, master_port: int) -> int:
        nodes = self.nodes()
        mid = next(n["id"] for n in nodes if n["port"] == master_port)
        return next(int(n["port"]) for n in nodes if n["master"] == mid)  # type: ignore[call-overload]

    def rejoin(self, port: int, timeout: float = 30.0) -> None:
        """Start a stopped node again and wait until it is a synced replica and the cluster is ok
        (a node that was not stopped is left as it is)."""
        stopped = self.procs[port].poll() is not None
        if stopped:
            self.restart(port)
        deadline = time.monotonic() + timeout
        while stopped:  # it starts as the master it was, then learns that it was replaced
            with self.client(port) as r:
                info = r.info("replication")
            if info["role"] == "slave" and info.get("master_link_status") == "up":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {port} did not come back as a synced replica:\n{self.log_tail(port)}")
            time.sleep(0.1)
        self.wait_ok()
        wait_replicas_synced(self, self.ports)
        self.wait_settled()

    def wait_settled(self, timeout: float = 30.0) -> None:
        """Until every node sees 3 masters, each with one replica (gossip has spread)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._settled(p) for p in self.ports):
                return
            time.sleep(0.1)
        raise RuntimeError(f"cluster layout not agreed on after {timeout}s")

    def _settled(self, port: int) -> bool:
        try:
            with self.client(port) as r:
                text = r.execute_command("CLUSTER", "NODES")
        except redis.RedisError:
            return False
        lines = (text.decode() if isinstance(text, bytes) else text).strip().splitlines()
        masters = {ln.split()[0] for ln in lines if "master" in ln.split()[2]}
        replicas = [ln.split()[3] for ln in lines if "slave" in ln.split()[2]]
        return len(masters) == 3 and sorted(replicas) == sorted(masters)

    def wait_ok(self, timeout: float = 30.0, *, skip: tuple[int, ...] = ()) -> None:
        """Until every live node says cluster_state:ok and every slot is served."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._ok(p) for p in self.ports if p not in skip and self.procs[p].poll() is None):
                return
            time.sleep(0.1)
        raise RuntimeError(f"cluster not ok after {timeout}s; log of {self.ports[0]}:\n{self.log_tail(self.ports[0])}")

    def _ok(self, port: int) -> bool:
        try:
            with self.client(port) as r:
                info = r.execute_command("CLUSTER", "INFO")
        except redis.RedisError:
            return False
        if isinstance(info, bytes):
            info = info.decode()
        return "cluster_state:ok" in info and "cluster_slots_ok:16384" in info


@contextlib.contextmanager
def local_cluster(start_port: int = 7100, node_timeout_ms: int = 2000) -> Iterator[LocalCluster]:
    """A 6-node cluster (3 masters, 3 replicas) on free ports from ``start_port``."""
    ports = free_ports(6, start_port, bus=True)
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="callq-cluster-")), ports=ports)
    try:
        for port in ports:
            cluster.start(port, "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                          "--cluster-node-timeout", str(node_timeout_ms), *FAST_SYNC)
        create = subprocess.run(
            [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, text=True, timeout=60)
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{create.stdout}\n{create.stderr}")
        cluster.wait_ok()
        wait_replicas_synced(cluster, ports)
        cluster.wait_settled()
        yield cluster
    finally:
        cluster.close()


def wait_replicas_synced(group: LocalRedisGroup, ports: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            with group.client(port) as r:
                info = r.info("replication")
            if info["role"] == "master" or info.get("master_link_status") == "up":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica {port} not in sync after {timeout}s:\n{group.log_tail(port)}")
            time.sleep(0.1)


@dataclass
class LocalSentinelGroup(LocalRedisGroup):
    """A master, a replica and three sentinels watching them as ``service``."""

    service: str = "callqmaster"
    data_ports: list[int] = field(default_factory=list)
    sentinel_ports: list[int] = field(default_factory=list)

    def url(self, *, scheme: str = "redis+sentinel", db: int = 0, **params: object) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports[1:])
        query = "&".join([f"hosts={hosts}", *(f"{k}={v}" for k, v in params.items())])
        return f"{scheme}://127.0.0.1:{self.sentinel_ports[0]}/{self.service}/{db}?{query}"

    def master_port(self) -> int:
        """The master's port as the sentinels' majority sees it."""
        for port in self.sentinel_ports:
            try:
                with self.client(port) as r:
                    host, p = r.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                return int(p)
            except (redis.RedisError, TypeError, ValueError):
                continue
        raise RuntimeError("no sentinel answers")


@contextlib.contextmanager
def local_sentinel(start_port: int = 7200, sentinel_start: int = 7300,
                   down_after_ms: int = 1000) -> Iterator[LocalSentinelGroup]:
    """Master + replica (ports from ``start_port``) and three sentinels (from ``sentinel_start``)."""
    data = free_ports(2, start_port)
    sentinels = free_ports(3, sentinel_start)
    group = LocalSentinelGroup(Path(tempfile.mkdtemp(prefix="callq-sentinel-")),
                               data_ports=data, sentinel_ports=sentinels)
    try:
        group.start(data[0], *FAST_SYNC)
        group.start(data[1], "--replicaof", "127.0.0.1", str(data[0]), *FAST_SYNC)
        wait_replicas_synced(group, data)
        for port in sentinels:
            conf = group.workdir / f"sentinel-{port}.conf"
            conf.write_text(
                f"sentinel monitor {group.service} 127.0.0.1 {data[0]} 2\n"
                f"sentinel down-after-milliseconds {group.service} {down_after_ms}\n"
                f"sentinel failover-timeout {group.service} 5000\n"
                f"sentinel parallel-syncs {group.service} 1\n")
            group.start(port, "--sentinel", conf=conf)
        deadline = time.monotonic() + 20
        while True:  # every sentinel knows the replica and the other sentinels
            if all(_sentinel_ready(group, p) for p in sentinels):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"sentinels not ready; log:\n{group.log_tail(sentinels[0])}")
            time.sleep(0.2)
        yield group
    finally:
        group.close()


def _sentinel_ready(group: LocalSentinelGroup, port: int) -> bool:
    try:
        with group.client(port) as r:
            info = r.execute_command("SENTINEL", "MASTER", group.service)
    except redis.RedisError:
        return False
    fields = dict(zip(info[0::2], info[1::2], strict=False)) if isinstance(info, list) else info
    fields = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
              for k, v in fields.items()}
    return int(fields.get("num-slaves", 0)) >= 1 and int(fields.get("num-other-sentinels", 0)) >= 2


_shared: dict[str, list[object]] = {}


@contextlib.contextmanager
def shared(kind: str) -> Iterator[LocalCluster | LocalSentinelGroup]:
    """One cluster (``kind="cluster"``) or sentinel group per process, however many test
    packages ask for it (session fixtures of several conftests); stopped when the last leaves."""
    if kind not in ("cluster", "sentinel"):
        raise ValueError(kind)
    if kind not in _shared:
        cm = local_cluster() if kind == "cluster" else local_sentinel()
        _shared[kind] = [cm, cm.__enter__(), 0]
    entry = _shared[kind]
    entry[2] = int(entry[2]) + 1  # type: ignore[call-overload]
    try:
        yield entry[1]  # type: ignore[misc]
    finally:
        entry[2] = int(entry[2]) - 1  # type: ignore[call-overload]
        if entry[2] == 0:
            del _shared[kind]
            entry[0].__exit__(None, None, None)  # type: ignore[attr-defined]
