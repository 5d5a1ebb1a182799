"""bench/run_all.py: runs every bench_*.py, reads its rows, reports failures and goes on."""

import subprocess
import sys
import textwrap
from pathlib import Path

RUN_ALL = Path(__file__).resolve().parents[1] / "bench" / "run_all.py"


def script(directory: Path, name: str, body: str) -> None:
    (directory / f"bench_{name}.py").write_text(textwrap.dedent(body))


def run_all(directory: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUN_ALL), "--bench-dir", str(directory), "--plain", *args],
                          capture_output=True, text=True, timeout=timeout)


OK = """
    import json, sys
    assert sys.argv[1:] == ["--json"], sys.argv
    print("a readable table")
    print('CALLQ_BENCH_JSON [{"bench": "old", "case": "stale", "callq": 1, "raw": 1, "unit": "calls/s"}]')
    print("CALLQ_BENCH_JSON " + json.dumps([
        {"bench": "okb", "case": "publish", "callq": 50.0, "raw": 200.0, "unit": "calls/s"},
        {"bench": "okb", "case": "peak RSS", "callq": 37.5, "raw": None, "unit": "MB"},
    ]))
"""


def line_of(out: str, bench: str, *words: str) -> str:
    """The one table line of ``bench`` holding ``words``."""
    [line] = [ln for ln in out.splitlines() if ln.split()[:1] == [bench] and all(w in ln.split() for w in words)]
    return line


def test_rows_ratios_and_a_failure_that_does_not_stop_the_others(tmp_path: Path) -> None:
    script(tmp_path, "a_crash", """
        import sys
        print("CALLQ_BENCH_JSON not even json")
        print("line 1 of the error", file=sys.stderr)
        print("the server did not answer", file=sys.stderr)
        sys.exit(3)
    """)
    script(tmp_path, "b_silent", "print('no rows at all')\n")
    script(tmp_path, "c_bad", """print('CALLQ_BENCH_JSON [{"bench": "x", "case": "y", "callq": "fast", "unit": "calls/s"}]')\n""")
    script(tmp_path, "d_ok", OK)
    proc = run_all(tmp_path)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "[4/4] bench_d_ok.py ... ok" in out  # ran after three failures
    assert line_of(out, "okb", "publish").split()[-3:] == ["200", "calls/s", "0.25"]
    assert line_of(out, "okb", "peak", "RSS").split()[-4:] == ["37.5", "-", "MB", "-"]
    assert "stale" not in out  # only the last CALLQ_BENCH_JSON line counts
    assert "FAILED: exit code 3" in line_of(out, "a_crash")
    assert "the server did not answer" in out.split("bench_a_crash.py FAILED")[1]
    assert "no line starting with 'CALLQ_BENCH_JSON'" in line_of(out, "b_silent")
    assert "row 0 callq must be a finite number, got 'fast'" in line_of(out, "c_bad")
    assert "3 of 4 benchmark(s) failed: a_crash, b_silent, c_bad" in out


def test_all_ok_exits_0_and_only_runs_the_named(tmp_path: Path) -> None:
    script(tmp_path, "d_ok", OK)
    script(tmp_path, "e_crash", "raise SystemExit(1)\n")
    proc = run_all(tmp_path, "--only", "d_ok")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "e_crash" not in proc.stdout
    listed = run_all(tmp_path, "--list")
    assert listed.returncode == 0
    assert [ln.split()[0] for ln in listed.stdout.splitlines()] == ["d_ok", "e_crash"]
    unknown = run_all(tmp_path, "--only", "d_ok,nope")
    assert unknown.returncode == 2 and "unknown bench nope; known: d_ok, e_crash" in unknown.stderr


def test_a_script_past_its_timeout_is_interrupted_and_may_clean_up(tmp_path: Path) -> None:
    marker = tmp_path / "cleaned-up"
    script(tmp_path, "hang", f"""
        import sys, time
        print("starting a server", flush=True)
        try:
            time.sleep(120)
        finally:
            open({str(marker)!r}, "w").close()
            print("stopped the server", file=sys.stderr, flush=True)
    """)
    script(tmp_path, "ok", OK)
    proc = run_all(tmp_path, "--timeout", "2")
    assert proc.returncode == 1
    assert "FAILED: timed out after 2 s" in line_of(proc.stdout, "hang")
    assert marker.exists()  # SIGINT first: the script's finally ran
    assert "stopped the server" in proc.stdout
    assert line_of(proc.stdout, "okb", "publish")
