"""The ``callq`` command line: run workers, look at and feed queues.

    callq worker module:task [module:task ...] [--processes N] [--concurrency N] [--qps X]
    callq size module:task            | callq size --broker URL QUEUE
    callq purge module:task [--yes]   | callq purge --broker URL QUEUE [--yes]
    callq publish module:task JSON    | callq publish --broker URL QUEUE JSON
    callq brokers
    callq status [QUEUE ...] [--broker URL] [--history URL] [--json]
    callq dlq list|replay|purge QUEUE [--broker URL] [--id ID ...]
    callq dashboard [--broker URL] [--history URL] [--host H] [--port P] [--token T]

Exit codes: 0 success, 1 runtime failure (broker unreachable, worker processes gave up),
2 usage or configuration error (message on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from .errors import BrokerError, ConfigError

log = logging.getLogger("callq.cli")

LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


class UsageError(Exception):
    """A mistake on the command line: exit code 2 with this message."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="callq", description="Run and inspect callq task queues.")
    p.add_argument("--log-level", default="INFO", type=str.upper,
                   choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], help="default: INFO")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    w = sub.add_parser("worker", help="consume the queues of one or more tasks until SIGINT/SIGTERM")
    w.add_argument("targets", nargs="+", metavar="MODULE:TASK", help="e.g. app.tasks:resize")
    w.add_argument("--processes", type=int, default=None,
                   help="worker processes per task (default: consume in this process)")
    w.add_argument("--concurrency", type=int, default=None, help="override the task's concurrency")
    w.add_argument("--qps", type=float, default=None, help="override the task's qps")
    w.add_argument("--start-method", choices=["fork", "spawn", "forkserver"], default=None,
                   help="with --processes (default: CALLQ_START_METHOD, else fork on Linux)")
    w.add_argument("--hard-timeout", type=float, default=None,
                   help="with --processes: kill a worker process whose call ran longer (seconds)")

    for name, helptext in (("size", "print how many messages wait on a queue"),
                           ("purge", "delete every waiting message of a queue")):
        c = sub.add_parser(name, help=helptext)
        _queue_args(c)
        if name == "purge":
            c.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

    pub = sub.add_parser("publish", help="publish one call given as a JSON object of keyword arguments")
    _queue_args(pub)
    pub.add_argument("body", metavar="JSON", help='e.g. \'{"a": 1, "b": 2}\'')

    sub.add_parser("brokers", help="list the installed broker URL schemes")

    st = sub.add_parser("status", help="print queues: size, rates, consumers, paused")
    st.add_argument("queues", nargs="*", metavar="QUEUE",
                    help="queue names (default: every queue a consumer started on recently)")
    st.add_argument("--broker", default=None, help="broker URL (default CALLQ_BROKER_URL or the embedded sqlite)")
    st.add_argument("--history", default=None, help="call history URL for rates (default CALLQ_HISTORY_URL)")
    st.add_argument("--interval", type=float, default=1.0,
                    help="seconds between the two size samples giving the publish rate (0: skip)")
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")

    d = sub.add_parser("dlq", help="list, replay or purge dead-lettered calls")
    dsub = d.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    for name, helptext in (("list", "show dead-lettered calls with their error"),
                           ("replay", "put dead-lettered calls back on their queue with a fresh attempt count"),
                           ("purge", "delete every dead-lettered call")):
        c = dsub.add_parser(name, help=helptext)
        _queue_args(c)
        c.add_argument("--dlq", default=None, help="the dead-letter queue's name (default: QUEUE.dlq)")
        if name == "list":
            c.add_argument("--limit", type=int, default=100, help="show at most this many (default 100)")
            c.add_argument("--json", action="store_true", help="one JSON object per line")
        if name == "replay":
            c.add_argument("--id", action="append", dest="ids", default=None, metavar="ID",
                           help="replay only this call id (repeatable); default: all")
        if name == "purge":
            c.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

    db = sub.add_parser("dashboard", help="serve the web dashboard")
    db.add_argument("--broker", action="append", default=None, metavar="URL",
                    help="broker URL (repeatable; default CALLQ_BROKER_URL or the embedded sqlite)")
    db.add_argument("--history", default=None, help="call history URL (default CALLQ_HISTORY_URL)")
    db.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; others need --token)")
    db.add_argument("--port", type=int, default=8765)
    db.add_argument("--token", default=None,
                    help="token for actions (default CALLQ_DASHBOARD_TOKEN, else a random one printed at start)")
    return p


def _queue_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="MODULE:TASK | QUEUE",
                   help="a task (module:task), or a queue name with --broker")
    p.add_argument("--broker", default=None,
                   help="broker URL (with a queue name; default CALLQ_BROKER_URL or the embedded sqlite)")


# --- targets ------------------------------------------------------------------------------------

def load_task(target: str) -> Any:
    """Import ``module:attr`` (attr may be dotted) and return the callq Task it names."""
    from .task import Task

    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{target!r} is not MODULE:TASK (for example app.tasks:resize)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules of the current directory
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise UsageError(f"cannot import module {module_name!r}: {exc} (is it on PYTHONPATH?)") from None
        raise
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, Task):
        raise UsageError(f"{target} is a {type(obj).__name__}, not a callq task (decorate it with @callq.task)")
    return obj


def _with_overrides(task: Any, **overrides: Any) -> Any:
    from .task import Task

    changes = {k: v for k, v in overrides.items() if v is not None}
    if not changes:
        return task
    return Task(task.fn, dataclasses.replace(task.options, **changes))


def _queue_and_connection(args: argparse.Namespace) -> tuple[str, Any]:
    from .broker import connect

    if ":" in args.target and args.broker is None:
        task = load_task(args.target)
        return task.options.queue, task.connection
    if ":" in args.target:
        raise UsageError(f"give a queue name with --broker, not a task ({args.target})")
    return args.target, connect(args.broker)


# --- commands -----------------------------------------------------------------------------------

def cmd_worker(args: argparse.Namespace) -> int:
    from .lifecycle import wait

    tasks = [_with_overrides(load_task(t), concurrency=args.concurrency, qps=args.qps) for t in args.targets]
    if args.processes is None and (args.start_method or args.hard_timeout):
        raise UsageError("--start-method and --hard-timeout need --processes")
    groups = []
    method = None
    if args.processes is not None:
        from .processes import resolve_start_method

        method = resolve_start_method(args.start_method)  # once: the first group starts a thread
    for task in tasks:
        if args.processes is None:
            task.consume()
        else:
            groups.append(task.consume(processes=args.processes, start_method=method,
                                       hard_timeout=args.hard_timeout))
    from .lifecycle import ConsumerCrashed

    try:
        wait()
    except ConsumerCrashed as exc:
        print(f"callq: {exc}", file=sys.stderr)
        return 1
    failed = [g.error for g in groups if g.error]
    for error in failed:
        print(f"callq: {error}", file=sys.stderr)
    return 1 if failed else 0


def cmd_size(args: argparse.Namespace) -> int:
    queue, conn = _queue_and_connection(args)
    print(conn.size(queue))
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    queue, conn = _queue_and_connection(args)
    if not args.yes:
        waiting = conn.size(queue)
        print(f"Delete the {waiting} message(s) waiting on {queue!r} at {conn.url}? [y/N] ",
              end="", file=sys.stderr, flush=True)
        try:
            answer = sys.stdin.readline()
        except (OSError, ValueError):  # no stdin at all
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted", file=sys.stderr)
            return 1
    print(conn.purge(queue))
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from .message import encode, new_meta

    try:
        body = json.loads(args.body)
    except ValueError as exc:
        raise UsageError(f"the message is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise UsageError(f"the message must be a JSON object of keyword arguments, got {type(body).__name__}")
    if ":" in args.target and args.broker is None:
        task = load_task(args.target)
        try:
            print(task.publish(body))  # checked against the function's signature
        except TypeError as exc:
            raise UsageError(str(exc)) from None
        return 0
    queue, conn = _queue_and_connection(args)
    meta = new_meta()
    try:
        encoded = encode(body, meta, where="publish")
    except TypeError as exc:
        raise UsageError(str(exc)) from None
    conn.publish(queue, [encoded])
    print(meta["id"])
    return 0


def cmd_brokers(args: argparse.Namespace) -> int:
    from .plugins import installed_schemes

    for scheme in installed_schemes():
        print(scheme)
    return 0


def _history_url(given: str | None) -> str | None:
    from .history.plugin import default_url

    url = given or os.environ.get("CALLQ_HISTORY_URL", "").strip() or None
    if url and url.lower() in ("1", "on", "true", "yes", "default"):
        return default_url()
    return url


def _open_history(url: str | None) -> Any:
    if not url:
        return None
    from .history import HistoryStore

    try:
        return HistoryStore(url)
    except ImportError:
        raise UsageError("call history needs SQLAlchemy: pip install 'callq[sql]'") from None
    except Exception as exc:
        raise UsageError(f"cannot open the call history at {url.split('://', 1)[0]}://...: "
                         f"{type(exc).__name__}: {exc}") from None


def cmd_status(args: argparse.Namespace) -> int:
    import time

    from .broker import connect
    from .status import collect, table

    conn = connect(args.broker)
    history = _open_history(_history_url(args.history))
    previous: dict[str, tuple[float, int]] = {}
    rows = collect(conn, args.queues or None, history=history, previous=previous)
    if args.interval > 0 and rows:
        time.sleep(args.interval)
        rows = collect(conn, args.queues or None, history=history, previous=previous)
    if args.json:
        print(json.dumps([{**{k: v for k, v in r.__dict__.items()}, "drain_seconds": r.drain_seconds}
                          for r in rows], default=str))
    elif not rows:
        print(f"no queues known at {conn.url}: no consumer started recently; name queues: callq status QUEUE ...")
    else:
        print(table(rows))
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    from . import dlq as dead

    queue, conn = _queue_and_connection(args)
    name = args.dlq or (_task_dlq(args.target) if ":" in args.target else dead.dlq_name(queue))
    if args.dlq_command == "list":
        letters = dead.peek(conn, name, args.limit)
        if args.json:
            for letter in letters:
                print(json.dumps(letter.as_dict(), default=str))
            return 0
        print(f"{conn.size(name)} dead letter(s) on {name}" + (f", showing {len(letters)}" if letters else ""))
        for letter in letters:
            error = f"{letter.error_type}: {letter.error}" if letter.error_type else (letter.reason or "")
            print(f"{letter.id or '-'}  attempts={letter.attempt + 1}  {letter.reason or ''}  {error}")
            print(f"    {json.dumps(letter.kwargs, default=str)[:200]}")
        return 0
    if args.dlq_command == "replay":
        if ":" in args.target and args.broker is None:
            from .results import store_url_for

            try:
                results = store_url_for(load_task(args.target).options)
            except ConfigError:
                results = None
        else:
            results = dead.default_results(conn, queue)
        n, problems = dead.replay(conn, name, ids=args.ids, results=results)
        for problem in problems:
            print(f"callq: {problem}", file=sys.stderr)
        print(f"replayed {n} call(s) from {name}")
        return 1 if problems and args.ids else 0
    if not args.yes:
        print(f"Delete the {conn.size(name)} dead letter(s) on {name!r} at {conn.url}? [y/N] ",
              end="", file=sys.stderr, flush=True)
        try:
            answer = sys.stdin.readline()
        except (OSError, ValueError):
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted", file=sys.stderr)
            return 1
    print(dead.purge(conn, name))
    return 0


def _task_dlq(target: str) -> str:
    return str(load_task(target).options.dlq)


def cmd_dashboard(args: argparse.Namespace) -> int:
    try:
        from .dashboard.server import serve
    except ImportError as exc:
        raise UsageError(f"the dashboard needs its extra: pip install 'callq[dashboard]' ({exc})") from None
    return serve(brokers=args.broker, history=_history_url(args.history), host=args.host, port=args.port,
                 token=args.token or os.environ.get("CALLQ_DASHBOARD_TOKEN") or None)


COMMANDS = {"worker": cmd_worker, "size": cmd_size, "purge": cmd_purge, "publish": cmd_publish,
            "brokers": cmd_brokers, "status": cmd_status, "dlq": cmd_dlq, "dashboard": cmd_dashboard}


def _setup_logging(level: str) -> None:
    root = logging.getLogger()
    if root.handlers:
        root.setLevel(level)
        return
    handler: logging.Handler
    try:
        if not sys.stderr.isatty():
            raise ImportError
        from rich.logging import RichHandler  # optional extra: callq[rich]

        handler = RichHandler(show_path=False)
        handler.setFormatter(logging.Formatter("%(process)d %(name)s: %(message)s"))
    except ImportError:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return COMMANDS[args.command](args)
    except (UsageError, ConfigError) as exc:  # BrokerNotFound is a ConfigError
        print(f"callq: error: {exc}", file=sys.stderr)
        return 2
    except BrokerError as exc:
        print(f"callq: broker error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
