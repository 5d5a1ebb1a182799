"""The `callq` command line, run as real subprocesses against sqlite and Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

import callq

MODULE = textwrap.dedent("""
    import os, time
    import callq

    @callq.task("cliq", broker=os.environ["CLI_URL"], concurrency=2, max_retries=0)
    def work(i: int) -> None:
        time.sleep(0.02)
        fd = os.open(os.environ["CLI_OUT"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.write(fd, f"{i} {os.getpid()}\\n".encode())
        os.close(fd)

    not_a_task = 42
""")


@pytest.fixture
def project(tmp_path):
    """A module file in tmp_path holding a task, and the environment to import it."""
    (tmp_path / "cli_tasks_mod.py").write_text(MODULE)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "CLI_URL": f"sqlite:///{tmp_path}/q.db?lease=2", "CLI_OUT": str(tmp_path / "ran.txt")}
    env["CALLQ_BROKER_URL"] = f"sqlite:///{tmp_path}/default.db"  # never the user's default file
    return tmp_path, env


def cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
        module: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "callq"] if module else [str(Path(sys.executable).with_name("callq"))]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, input=stdin, timeout=60)


def _ran(path: Path) -> list[int]:
    return [int(line.split()[0]) for line in path.read_text().splitlines()] if path.exists() else []


def test_brokers_lists_installed_schemes():
    r = cli("brokers")
    assert r.returncode == 0, r.stderr
    schemes = r.stdout.split()
    assert "memory" in schemes and "sqlite" in schemes and "redis" in schemes
    assert schemes == sorted(schemes)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_publish_size_purge_by_broker_url(tmp_path, kind):
    url = (f"sqlite:///{tmp_path}/q.db" if kind == "sqlite"
           else f"redis://127.0.0.1:6379/0?prefix=cqcli{uuid.uuid4().hex[:8]}")
    queue = "raw"
    try:
        for i in range(3):
            r = cli("publish", "--broker", url, queue, json.dumps({"a": i}))
            assert r.returncode == 0, r.stderr
            assert len(r.stdout.strip()) == 32  # the message id
        r = cli("size", "--broker", url, queue)
        assert (r.returncode, r.stdout.strip()) == (0, "3")
        # the body travels as published, with callq's metadata key added
        deliveries = callq.connect(url).fetch(queue, 1, 1.0)
        body = json.loads(deliveries[0].body)
        assert body["a"] in (0, 1, 2) and "_callq" in body
        callq.connect(url).requeue(deliveries)
        # purge asks first; anything but yes deletes nothing
        r = cli("purge", "--broker", url, queue, stdin="n\n")
        assert r.returncode == 1 and "Delete the 3 message(s)" in r.stderr
        assert cli("size", "--broker", url, queue).stdout.strip() == "3"
        r = cli("purge", "--broker", url, queue, stdin="y\n")
        assert r.returncode == 0, r.stderr
        assert cli("size", "--broker", url, queue).stdout.strip() == "0"
        cli("publish", "--broker", url, queue, '{"a": 9}')
        r = cli("purge", "--broker", url, queue, "--yes")
        assert (r.returncode, r.stdout.strip()) == (0, "1")
    finally:
        callq.connect(url).purge(queue)
        callq.connect(url).close()


def test_worker_runs_tasks_of_a_module_in_process_and_in_processes(project):
    tmp_path, env = project
    out = tmp_path / "ran.txt"
    r = subprocess.run([sys.executable, "-c", "import cli_tasks_mod as m; m.work.push_many((i,) for i in range(40))"],
                       env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert cli("size", "cli_tasks_mod:work", env=env).stdout.strip() == "40"
    assert cli("publish", "cli_tasks_mod:work", '{"i": 40}', env=env).returncode == 0

    # several processes, options overridden on the command line
    worker = subprocess.Popen([str(Path(sys.executable).with_name("callq")), "worker", "cli_tasks_mod:work",
                               "--processes", "2", "--concurrency", "3", "--start-method", "spawn"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while sorted(_ran(out)) != list(range(41)) and time.monotonic() < deadline:
        time.sleep(0.1)
    worker.send_signal(signal.SIGTERM)
    _, stderr = worker.communicate(timeout=40)
    assert worker.returncode == 0, stderr
    assert sorted(_ran(out)) == list(range(41))
    assert "started 2 worker process(es) for cliq (spawn)" in stderr
    assert stderr.count("(concurrency 3)") == 2  # the override reached both children

    # in this process, through `python -m callq`
    assert cli("publish", "cli_tasks_mod:work", '{"i": 41}', env=env, module=True).returncode == 0
    worker = subprocess.Popen([sys.executable, "-m", "callq", "--log-level", "warning", "worker",
                               "cli_tasks_mod:work"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    deadline = time.monotonic() + 20
    while 41 not in _ran(out) and time.monotonic() < deadline:
        time.sleep(0.1)
    worker.send_signal(signal.SIGINT)
    _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr
    assert 41 in _ran(out)
    assert "consuming" not in stderr  # --log-level warning hides the INFO lines


@pytest.mark.parametrize("args, message", [
    (["size", "--broker", "acme://localhost:5555", "q"], "no broker installed for URL scheme 'acme'"),
    (["size", "no_such_module_xyz:work"], "cannot import module 'no_such_module_xyz'"),
    (["worker", "cli_tasks_mod"], "is not MODULE:TASK"),
    (["size", "cli_tasks_mod:missing"], "has no attribute 'missing'"),
    (["size", "cli_tasks_mod:not_a_task"], "is a int, not a callq task"),
    (["worker", "cli_tasks_mod:work", "--concurrency", "0"], "concurrency must be >= 1"),
    (["worker", "cli_tasks_mod:work", "--processes", "0"], "processes must be an integer >= 1"),
    (["worker", "cli_tasks_mod:work", "--hard-timeout", "3"], "need --processes"),
    (["publish", "cli_tasks_mod:work", "{not json"], "not valid JSON"),
    (["publish", "cli_tasks_mod:work", "[1, 2]"], "must be a JSON object"),
    (["publish", "cli_tasks_mod:work", '{"j": 1}'], "missing a required argument: 'i'"),
    (["purge", "--broker", "sqlite:///x.db", "cli_tasks_mod:work"], "give a queue name with --broker"),
    (["size", "--broker", "sqlite:///x.db?bogus=1", "q"], "bogus"),
])
def test_errors_exit_2_with_a_clear_message(project, args, message):
    _, env = project
    r = cli(*args, env=env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_usage_errors_exit_2():
    r = cli("frobnicate")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = cli("worker")
    assert r.returncode == 2 and "MODULE:TASK" in r.stderr
