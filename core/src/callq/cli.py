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

from .cli_inspect import add_inspect_parsers, cmd_dashboard, cmd_dlq, cmd_status
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

    add_inspect_parsers(sub, _queue_args)
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
