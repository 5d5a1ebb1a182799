"""`pip install callq` alone runs on the default broker: sqlite ships in core.

Builds a wheel of core/ only, installs it (with its runtime dependencies and nothing else)
into a fresh virtualenv, and pushes and consumes calls there with no broker URL given.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "core"

_SCRIPT = r"""
import json, os
from importlib.metadata import distributions

import callq

seen = []

@callq.task("wheel-check", stop_when_idle=0.5)
def add(a, b):
    seen.append(a + b)

url = str(add.connection.url)
add.push_many([(i, i) for i in range(50)])
add.consume()
assert callq.wait(30), "consumer did not stop"
print(json.dumps({
    "url": url,
    "seen": sorted(seen),
    "callq": callq.__file__,
    "dists": sorted(d.metadata["Name"].lower() for d in distributions()),
}))
"""


def _run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=150, **kwargs)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_core_wheel_alone_runs_the_default_sqlite_broker(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", CORE, "-w", wheels])
    [wheel] = wheels.glob("callq-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "-q", wheel])

    data = tmp_path / "data"
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("CALLQ_BROKER_URL", "PYTHONPATH", "VIRTUAL_ENV")}
    env.update(XDG_DATA_HOME=str(data), HOME=str(home))
    proc = _run([python, "-c", _SCRIPT], env=env, cwd=tmp_path)
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    database = data / "callq" / "callq.db"
    assert out["url"] == f"sqlite:///{database}"
    assert database.is_file()
    assert out["seen"] == [2 * i for i in range(50)]
    # the callq that ran is the wheel's, and no broker distribution came with it
    assert Path(out["callq"]).is_relative_to(venv)
    assert "callq" in out["dists"]
    assert not [d for d in out["dists"] if d.startswith("callq-") or d.startswith("callq_")]
    assert list(home.iterdir()) == []  # nothing written to the home directory
