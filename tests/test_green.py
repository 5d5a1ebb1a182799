"""gevent and eventlet modes, each in a fresh process patched the way users must patch."""

import subprocess
import sys
import textwrap

import pytest

PROGRAM = textwrap.dedent("""
    import sys
    mode = sys.argv[1]
    if mode == "gevent":
        from gevent import monkey; monkey.patch_all()
    else:
        import eventlet; eventlet.monkey_patch()
    import time, uuid
    import callq

    @callq.task("green-" + uuid.uuid4().hex[:6], broker="memory://green", mode=mode, concurrency=200,
                stop_when_idle=0.5)
    def io_call(i):
        time.sleep(0.5)  # patched: yields to other green threads

    io_call.push_many((i,) for i in range(200))
    started = time.monotonic()
    io_call.consume()
    callq.wait()
    elapsed = time.monotonic() - started
    stats = io_call.stats()
    print(stats.done, round(elapsed, 2), flush=True)
""")


@pytest.mark.parametrize("mode", ["gevent", "eventlet"])
def test_green_mode_runs_many_calls_at_once(mode):
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    done, elapsed = out.stdout.split()
    assert int(done) == 200
    # 200 calls of 0.5 s each, serially 100 s: they overlap on green threads
    assert float(elapsed) < 15, elapsed
