"""Run every benchmark (bench/bench_*.py) and print one table of figures and ratios.

    .venv/bin/python bench/run_all.py [--only core,sqlite] [--list] [--timeout 480]

Each script runs alone (one after another: the machine's cores are the thing measured) as
``python bench/bench_<name>.py --json``; it starts and stops any server it needs itself.
From its stdout the last line starting with ``CALLQ_BENCH_JSON `` is read: a JSON list of
rows ``{"bench", "case", "callq", "raw" (or null), "unit"}``. ratio = callq / raw.

A script that exits non-zero, times out or prints no valid rows is shown as FAILED with
the last lines of its stderr; the others still run, and run_all exits 1 at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PREFIX = "CALLQ_BENCH_JSON "
STDERR_LINES = 15
#: seconds a script gets to clean up (stop its servers) after SIGINT, before SIGKILL
GRACE = 15.0


@dataclass
class Row:
    bench: str
    case: str
    callq: float
    raw: float | None
    unit: str

    @property
    def ratio(self) -> float | None:
        if self.raw is None or self.raw == 0:
            return None
        return self.callq / self.raw


@dataclass
class Result:
    name: str
    seconds: float = 0.0
    rows: list[Row] = field(default_factory=list)
    error: str | None = None  # None: succeeded
    stderr_tail: list[str] = field(default_factory=list)


def discover(directory: Path = BENCH_DIR) -> dict[str, Path]:
    """bench name (the file name without ``bench_`` and ``.py``) -> script, sorted by name."""
    return {p.stem[len("bench_"):]: p for p in sorted(directory.glob("bench_*.py"))}


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def parse_rows(stdout: str) -> list[Row]:
    """The rows of the last ``CALLQ_BENCH_JSON`` line; ValueError naming what is wrong."""
    lines = [line for line in stdout.splitlines() if line.startswith(PREFIX)]
    if not lines:
        raise ValueError(f"no line starting with {PREFIX.strip()!r} on stdout")
    try:
        data = json.loads(lines[-1][len(PREFIX):])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{PREFIX.strip()} line is not JSON: {exc}") from None
    if not isinstance(data, list) or not data:
        raise ValueError(f"{PREFIX.strip()} must be a non-empty JSON list of rows")
    rows = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"row {i} is not an object: {item!r}")
        missing = {"bench", "case", "callq", "unit"} - item.keys()
        if missing:
            raise ValueError(f"row {i} lacks {', '.join(sorted(missing))}: {item!r}")
        raw = item.get("raw")
        rows.append(Row(
            bench=str(item["bench"]),
            case=str(item["case"]),
            callq=_number(item["callq"], f"row {i} callq"),
            raw=None if raw is None else _number(raw, f"row {i} raw"),
            unit=str(item["unit"]),
        ))
    return rows


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT first (KeyboardInterrupt runs the script's cleanup), then SIGKILL its group."""
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(GRACE)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_one(name: str, script: Path, timeout: float, cwd: Path) -> Result:
    result = Result(name)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(script), "--json"], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        stdout, stderr = proc.communicate()
        result.error = f"timed out after {timeout:.0f} s"
    except BaseException:
        _stop(proc)
        raise
    result.seconds = time.monotonic() - started
    if result.error is None and proc.returncode != 0:
        result.error = f"exit code {proc.returncode}"
    try:
        result.rows = parse_rows(stdout)
    except ValueError as exc:
        if result.error is None:
            result.error = str(exc)
    if result.error is not None:
        result.stderr_tail = (stderr or "").rstrip().splitlines()[-STDERR_LINES:]
    return result


# --- the table --------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"


def table_rows(results: list[Result]) -> list[tuple[list[str], bool]]:
    """Cells (bench, case, callq, raw, unit, ratio) per line, and whether it is a failure."""
    out: list[tuple[list[str], bool]] = []
    for res in results:
        for r in res.rows:
            ratio = r.ratio
            out.append(([r.bench, r.case, _fmt(r.callq), _fmt(r.raw), r.unit,
                         "-" if ratio is None else f"{ratio:.2f}"], False))
        if res.error is not None:
            out.append(([res.name, f"FAILED: {res.error}", "", "", "", ""], True))
    return out


HEADERS = ["bench", "case", "callq", "raw", "unit", "ratio"]
_RIGHT = {2, 3, 5}


def print_plain(results: list[Result], title: str) -> None:
    lines = table_rows(results)
    widths = [max([len(h)] + [len(cells[i]) for cells, _ in lines]) for i, h in enumerate(HEADERS)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in _RIGHT else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    print(title)
    print(fmt(HEADERS))
    print(fmt(["-" * w for w in widths]))
    for cells, _failed in lines:
        print(fmt(cells))


def print_rich(results: list[Result], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped or in CI: no 80-column wrap of the case names
        console = Console(width=160)
    table = Table()
    for i, header in enumerate(HEADERS):
        table.add_column(header, justify="right" if i in _RIGHT else "left")
    previous = None
    for cells, failed in table_rows(results):
        if previous is not None and cells[0] != previous:
            table.add_section()
        previous = cells[0]
        table.add_row(*cells, style="bold red" if failed else None)
    console.print(title, highlight=False)
    console.print(table)


def print_failures(results: list[Result]) -> None:
    for res in results:
        if res.error is None:
            continue
        print(f"\nbench_{res.name}.py FAILED ({res.error}); last lines of its stderr:")
        for line in res.stderr_tail or ["(nothing on stderr)"]:
            print(f"  {line}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated bench names (see --list)")
    ap.add_argument("--list", action="store_true", help="list the benchmarks found and exit")
    ap.add_argument("--timeout", type=float, default=480.0, help="seconds per script (default 480)")
    ap.add_argument("--plain", action="store_true", help="plain-text table even if rich is installed")
    ap.add_argument("--bench-dir", type=Path, default=BENCH_DIR, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.timeout <= 0:
        ap.error(f"--timeout must be > 0, got {args.timeout}")

    bench_dir = args.bench_dir.resolve()
    found = discover(bench_dir)
    if args.list:
        for name, path in found.items():
            print(f"{name:<12} {path.relative_to(bench_dir.parent)}")
        return 0
    if not found:
        ap.error(f"no bench_*.py found in {bench_dir}")
    names = list(found)
    if args.only:
        wanted = {n.strip().removeprefix("bench_").removesuffix(".py") for n in args.only.split(",") if n.strip()}
        unknown = sorted(wanted - found.keys())
        if unknown:
            ap.error(f"unknown bench {', '.join(unknown)}; known: {', '.join(found)}")
        names = [n for n in found if n in wanted]

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, load {load:.2f} at start; "
          f"{len(names)} benchmark(s), one at a time, timeout {args.timeout:.0f} s each", flush=True)
    results = []
    started = time.monotonic()
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] bench_{name}.py ...", end=" ", flush=True)
        res = run_one(name, found[name], args.timeout, bench_dir.parent)
        results.append(res)
        status = "ok" if res.error is None else f"FAILED ({res.error})"
        print(f"{status}, {res.seconds:.1f} s, {len(res.rows)} row(s)", flush=True)

    title = f"callq vs raw clients ({time.monotonic() - started:.0f} s; ratio = callq / raw, higher is better)"
    print()
    try:
        if args.plain:
            raise ImportError
        print_rich(results, title)
    except ImportError:
        print_plain(results, title)
    print_failures(results)
    failed = [r.name for r in results if r.error is not None]
    if failed:
        print(f"\n{len(failed)} of {len(results)} benchmark(s) failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
