"""A real worker process: SIGTERM/SIGINT stop it gracefully with exit code 0, nothing lost."""

import signal
import subprocess
import sys
import textwrap
import time

import pytest

WORKER = textwrap.dedent("""
    import sys, time, os
    import callq
    url, out = sys.argv[1], sys.argv[2]
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    @callq.task("sig", broker=url, concurrency=4)
    def work(i):
        time.sleep(0.2)
        os.write(fd, f"{i}\\n".encode())

    if sys.argv[3] == "publish":
        work.push_many((i,) for i in range(200))
    work.consume()
    print("ready", flush=True)
    callq.wait()
    print("bye", flush=True)
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_gracefully_and_loses_nothing(tmp_path, sig):
    url = f"sqlite:///{tmp_path}/q.db"
    out = tmp_path / "ran.txt"
    proc = subprocess.Popen([sys.executable, "-c", WORKER, url, str(out), "publish"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "bye" in stdout
    first = out.read_text().split()
    assert 0 < len(first) < 200
    # a fresh worker finishes the rest: nothing was lost on the way down
    proc = subprocess.Popen([sys.executable, "-c", WORKER, url, str(out), "resume"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 60
    while len(set(out.read_text().split())) < 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    ran = out.read_text().split()
    assert set(ran) == {str(i) for i in range(200)}
    assert len(ran) == 200, "a graceful stop must not run a call twice"
