"""The dashboard's Starlette application: pages, actions and the token check."""

from __future__ import annotations

import hmac
import logging
import os
import time
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import dlq as dead
from ..broker import Connection, connect
from ..registry import known_queues
from ..status import QueueStatus, collect
from ..task import is_paused, pause, resume
from ..url import BrokerURL
from . import pages
from .charts import bar_chart

log = logging.getLogger("callq.dashboard")

COOKIE = "callq_token"
PAGE_SIZE = 50
STATIC = os.path.join(os.path.dirname(__file__), "static")


class Dashboard:
    """State shared by the requests: brokers, history, token, previous queue sizes."""

    def __init__(self, brokers: list[str], history: Any, token: str, *, public: bool) -> None:
        if not token:
            raise ValueError("the dashboard needs a token")
        self.urls = brokers
        self.history = history
        self.token = token
        self.public = public  # bound beyond loopback: reading needs the token too
        self.previous: list[dict[str, tuple[float, int]]] = [{} for _ in brokers]

    def conn(self, index: int) -> Connection:
        if not 0 <= index < len(self.urls):
            raise IndexError(f"no broker #{index}")
        return connect(self.urls[index])

    def authed(self, request: Request, form: dict[str, str] | None = None) -> bool:
        given = (request.cookies.get(COOKIE) or request.headers.get("x-callq-token")
                 or (form or {}).get("token") or "")
        return hmac.compare_digest(given.encode(), self.token.encode())

    def statuses(self) -> list[tuple[int, str, list[QueueStatus] | str]]:
        """Per broker: (index, masked URL, queue statuses or the error text)."""
        out = []
        extra = self.history.queues() if self.history is not None else []
        for i, url in enumerate(self.urls):
            label = str(BrokerURL.parse(url))  # password masked
            try:
                conn = connect(url)
                known = collect(conn, None, history=self.history, previous=self.previous[i])
                names = {r.queue for r in known}
                more = [q for q in extra if q not in names and not q.endswith(".dlq")] if i == 0 else []
                if more:
                    known += collect(conn, more, history=self.history, previous=self.previous[i])
            except Exception as exc:  # noqa: BLE001 - show the broker's error, keep the page
                log.warning("dashboard: broker %s: %s: %s", label, type(exc).__name__, exc)
                out.append((i, label, f"{type(exc).__name__}: {_masked(str(exc), url)}"))
                continue
            out.append((i, label, sorted(known, key=lambda r: r.queue)))
        return out


def _masked(text: str, url: str) -> str:
    password = BrokerURL.parse(url).password
    return text.replace(password, "***") if password else text


def _page(request: Request, title: str, body: str, **kw: Any) -> HTMLResponse:
    board: Dashboard = request.app.state.board
    flash = request.query_params.get("flash")
    error = request.query_params.get("error")
    return HTMLResponse(pages.layout(title, request.url.path if request.url.path in dict(pages.NAV) else "",
                                     body, flash=error or flash, error=bool(error), authed=board.authed(request)),
                        **kw)


def _guard(request: Request) -> Response | None:
    board: Dashboard = request.app.state.board
    if board.public and not board.authed(request):
        return HTMLResponse(pages.layout("Token required", "", "<p>Open /login?token=... first.</p>"), status_code=401)
    return None


async def queues(request: Request) -> Response:
    if (denied := _guard(request)) is not None:
        return denied
    board: Dashboard = request.app.state.board

    def build() -> str:
        chart = (bar_chart(board.history.counts(1.0, 60), title="finished / failed per second", bucket=1.0,
                           chart_id="chart-now") if board.history is not None else pages.HISTORY_OFF)
        return pages.queues_page(board.statuses(), chart)

    return _page(request, "Queues", await run_in_threadpool(build))


def _filters(request: Request) -> dict[str, str]:
    q = request.query_params
    return {k: q.get(k, "").strip() for k in ("queue", "outcome", "text", "since")}


async def calls(request: Request) -> Response:
    if (denied := _guard(request)) is not None:
        return denied
    board: Dashboard = request.app.state.board
    if board.history is None:
        return _page(request, "Calls", pages.HISTORY_OFF)
    f = _filters(request)
    try:
        number = max(0, int(request.query_params.get("page", "0")))
        since = time.time() - float(f["since"]) if f["since"] else None
    except ValueError:
        return _page(request, "Calls", "<p>bad page or since</p>", status_code=400)

    def build() -> str:
        page = board.history.search(queue=f["queue"] or None, outcome=f["outcome"] or None, since=since,
                                    text=f["text"] or None, limit=PAGE_SIZE, offset=number * PAGE_SIZE)
        return pages.calls_page(page, f, board.history.queues())

    return _page(request, "Calls", await run_in_threadpool(build))


async def call_detail(request: Request) -> Response:
    if (denied := _guard(request)) is not None:
        return denied
    board: Dashboard = request.app.state.board
    call_id = request.path_params["call_id"]
    if board.history is None:
        return _page(request, f"Call {call_id}", pages.HISTORY_OFF)
    attempts = await run_in_threadpool(board.history.attempts, call_id)
    return _page(request, f"Call {call_id}", pages.detail_page(call_id, attempts),
                 status_code=200 if attempts else 404)


async def dead_letters(request: Request) -> Response:
    if (denied := _guard(request)) is not None:
        return denied
    board: Dashboard = request.app.state.board
    queue = request.query_params.get("queue")
    if not queue:
        def index() -> str:
            items = [(i, r.queue, r.dlq_size or 0) for i, _, rows in board.statuses() if not isinstance(rows, str)
                     for r in rows]
            return pages.dlq_index(items)

        return _page(request, "Dead letters", await run_in_threadpool(index))
    try:
        b = int(request.query_params.get("broker", "0"))
        conn = board.conn(b)
    except (ValueError, IndexError):
        return _page(request, "Dead letters", "<p>unknown broker</p>", status_code=404)
    def build() -> str:
        name = _dlq_of(conn, queue)
        return pages.dlq_page(b, queue, name, conn.size(name), dead.peek(conn, name, 100))

    return _page(request, f"Dead letters of {queue}", await run_in_threadpool(build))


async def charts(request: Request) -> Response:
    if (denied := _guard(request)) is not None:
        return denied
    board: Dashboard = request.app.state.board
    if board.history is None:
        return _page(request, "Charts", pages.HISTORY_OFF)
    queue = request.query_params.get("queue") or None
    body = await run_in_threadpool(lambda: pages.charts_page(board.history, queue, board.history.queues()))
    return _page(request, "Charts", body)


async def login(request: Request) -> Response:
    board: Dashboard = request.app.state.board
    given = request.query_params.get("token", "")
    if not hmac.compare_digest(given.encode(), board.token.encode()):
        return HTMLResponse(pages.layout("Login", "", "<p>Wrong token.</p>"), status_code=403)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(COOKIE, board.token, httponly=True, samesite="strict")
    return response


async def action(request: Request) -> Response:
    board: Dashboard = request.app.state.board
    raw = (await request.body()).decode(errors="replace")
    form = {k: v[0] for k, v in parse_qs(raw).items()}
    if not board.authed(request, form):
        log.warning("refused %s on %s: no valid token", form.get("action"), form.get("queue"))
        return HTMLResponse(pages.layout("Refused", "", '<p class="flash err" id="refused">Action refused: a valid '
                                         "token is needed (open /login?token=...).</p>"), status_code=403)
    what, queue = form.get("action", ""), form.get("queue", "")
    try:
        conn = board.conn(int(form.get("broker", "0")))
    except (ValueError, IndexError):
        return HTMLResponse("unknown broker", status_code=400)
    if not queue:
        return HTMLResponse("queue missing", status_code=400)
    back = "/"
    try:
        message = await run_in_threadpool(_act, conn, what, queue, form.get("id"))
        if what in ("replay", "dlq-purge"):
            back = "/dlq?" + urlencode({"queue": queue, "broker": form.get("broker", "0")})
        return RedirectResponse(f"{back}{'&' if '?' in back else '?'}{urlencode({'flash': message})}", status_code=303)
    except Exception as exc:  # noqa: BLE001 - show the failure on the page
        log.exception("dashboard action %s on %s failed", what, queue)
        return RedirectResponse(f"{back}?{urlencode({'error': f'{what} failed: {type(exc).__name__}: {exc}'})}",
                                status_code=303)


def _dlq_of(conn: Connection, queue: str) -> str:
    """The queue's dead-letter queue as its consumers registered it (default ``<queue>.dlq``)."""
    if conn.capabilities.shared_state:
        entry = known_queues(conn.state).get(queue) or {}
        if entry.get("dlq"):
            return str(entry["dlq"])
    return dead.dlq_name(queue)


def _act(conn: Connection, what: str, queue: str, call_id: str | None) -> str:
    url = conn.url.raw
    if what == "pause":
        pause(queue, broker=url)
        return f"paused {queue}"
    if what == "resume":
        resume(queue, broker=url)
        return f"resumed {queue}" if not is_paused(queue, broker=url) else f"{queue} is still paused"
    if what == "purge":
        return f"purged {conn.purge(queue)} message(s) from {queue}"
    if what == "dlq-purge":
        return f"purged {dead.purge(conn, _dlq_of(conn, queue))} dead letter(s) of {queue}"
    if what == "replay":
        n, problems = dead.replay(conn, _dlq_of(conn, queue), ids=[call_id] if call_id else None,
                                  results=dead.default_results(conn, queue))
        return f"replayed {n} call(s) to {queue}" + (f"; {'; '.join(problems)}" if problems else "")
    raise ValueError(f"unknown action {what!r}")


def create_app(brokers: list[str], history: Any = None, *, token: str, public: bool = False) -> Starlette:
    """The dashboard for these broker URLs and this :class:`callq.history.HistoryStore` (or None)."""
    app = Starlette(routes=[
        Route("/", queues), Route("/calls", calls), Route("/calls/{call_id}", call_detail),
        Route("/dlq", dead_letters), Route("/charts", charts), Route("/login", login),
        Route("/action", action, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ])
    app.state.board = Dashboard(brokers, history, token, public=public)
    return app
