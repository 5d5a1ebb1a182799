"""``callq status``, ``callq dlq ...`` and ``callq dashboard``: looking at queues and acting on them."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from .errors import ConfigError


def add_inspect_parsers(sub: Any, _queue_args: Callable[[argparse.ArgumentParser], None]) -> None:
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
        raise _usage("call history needs SQLAlchemy: pip install 'callq[sql]'") from None
    except Exception as exc:
        raise _usage(f"cannot open the call history at {url.split('://', 1)[0]}://...: "
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

    queue, conn = _cli()._queue_and_connection(args)
    name = args.dlq or (_task_dlq(args.target) if ":" in args.target else _registered_dlq(conn, queue))
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
                results = store_url_for(_cli().load_task(args.target).options)
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


def _registered_dlq(conn: Any, queue: str) -> str:
    """The dead-letter queue the queue's consumers registered, else ``<queue>.dlq``."""
    from .dlq import dlq_name
    from .registry import known_queues

    if conn.capabilities.shared_state:
        entry = known_queues(conn.state).get(queue) or {}
        if entry.get("dlq"):
            return str(entry["dlq"])
    return dlq_name(queue)


def _task_dlq(target: str) -> str:
    return str(_cli().load_task(target).options.dlq)


def cmd_dashboard(args: argparse.Namespace) -> int:
    try:
        from .dashboard.server import serve
    except ImportError as exc:
        raise _usage(f"the dashboard needs its extra: pip install 'callq[dashboard]' ({exc})") from None
    return serve(brokers=args.broker, history=_history_url(args.history), host=args.host, port=args.port,
                 token=args.token or os.environ.get("CALLQ_DASHBOARD_TOKEN") or None)


def _cli() -> Any:
    from . import cli

    return cli


def _usage(message: str) -> Exception:
    return _cli().UsageError(message)  # type: ignore[no-any-return]
