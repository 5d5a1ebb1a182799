"""HTML of the dashboard's pages (server-rendered, escaped, no template engine needed)."""

from __future__ import annotations

import json
import time
from html import escape
from typing import Any
from urllib.parse import urlencode

from ..status import QueueStatus, fmt_seconds
from .charts import SERIES, bar_chart

NAV = (("/", "Queues"), ("/calls", "Calls"), ("/dlq", "Dead letters"), ("/charts", "Charts"))
OUTCOMES = ("", "done", "failed", "retry", "dead", "expired", "skipped", "requeue", "malformed")


def layout(title: str, active: str, body: str, *, flash: str | None = None, error: bool = False,
           authed: bool = False) -> str:
    nav = "".join(f'<a href="{href}" class="{"on" if href == active else ""}">{name}</a>' for href, name in NAV)
    login = ('<span class="muted">actions enabled</span>' if authed
             else '<span class="muted">read-only: open /login?token=... to act</span>')
    note = f'<div class="flash{" err" if error else ""}" role="status">{escape(flash)}</div>' if flash else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)} - callq</title>'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="stylesheet" href="/static/app.css"></head><body>'
            f'<header><span class="brand">callq</span>{nav}<span style="flex:1"></span>'
            '<label class="muted"><input type="checkbox" id="autorefresh"> auto refresh</label>'
            f'{login}</header><main><h1>{escape(title)}</h1>{note}{body}</main>'
            '<script src="/static/app.js"></script></body></html>')


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _button(action: str, label: str, broker: int, queue: str, *, confirm: str | None = None,
            extra: dict[str, str] | None = None) -> str:
    fields = {"action": action, "broker": str(broker), "queue": queue, **(extra or {})}
    hidden = "".join(f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in fields.items())
    ask = f' data-confirm="{escape(confirm)}"' if confirm else ""
    return (f'<form class="inline" method="post" action="/action"{ask}>{hidden}'
            f'<button type="submit" data-action="{escape(action)}" data-queue="{escape(queue)}">{escape(label)}</button></form>')


def queues_page(brokers: list[tuple[int, str, list[QueueStatus] | str]], chart: str) -> str:
    out = []
    for index, label, rows in brokers:
        out.append(f'<h2>Broker {escape(label)}</h2>')
        if isinstance(rows, str):
            out.append(f'<p class="flash err broker-error">cannot reach this broker: {escape(rows)}</p>')
            continue
        if not rows:
            out.append('<p class="muted">No queues known yet: they appear once a consumer starts.</p>')
            continue
        out.append('<table id="queues"><tr><th>Queue</th><th>Size</th><th>Dead letters</th><th>Published/s</th>'
                   '<th>Done/s</th><th>Failed/s</th><th>Time to drain</th><th>Consumers</th><th>Running</th>'
                   '<th>Paused</th><th>Actions</th></tr>')
        for r in rows:
            toggle = (_button("resume", "Resume", index, r.queue) if r.paused
                      else _button("pause", "Pause", index, r.queue))
            purge = _button("purge", "Purge", index, r.queue, confirm=f"Delete every waiting message of {r.queue}?")
            size = "?" if r.size is None else str(r.size)
            dead = "?" if r.dlq_size is None else str(r.dlq_size)
            out.append(
                f'<tr data-queue="{escape(r.queue)}"><td><a href="/calls?{urlencode({"queue": r.queue})}">'
                f'{escape(r.queue)}</a></td><td class="num size">{size}</td>'
                f'<td class="num dlq"><a href="/dlq?{urlencode({"queue": r.queue, "broker": index})}">{dead}</a></td>'
                f'<td class="num">{_rate(r.publish_rate)}</td><td class="num">{_rate(r.done_rate)}</td>'
                f'<td class="num">{_rate(r.failed_rate)}</td><td class="num">{fmt_seconds(r.drain_seconds)}</td>'
                f'<td class="num consumers">{r.consumers}</td><td class="num">{r.running}</td>'
                f'<td class="paused">{"yes" if r.paused else "no"}</td><td>{toggle} {purge}</td></tr>')
            if r.error:
                out.append(f'<tr><td colspan="11" class="flash err">{escape(r.error)}</td></tr>')
        out.append("</table>")
        workers = [w for r in rows for w in r.workers]
        out.append("<h3>Live consumers</h3>")
        if not workers:
            out.append('<p class="muted">No consumer sent a heartbeat recently.</p>')
        else:
            out.append('<table id="consumers"><tr><th>Queue</th><th>Host</th><th>PID</th><th>Concurrency</th>'
                       '<th>qps limit</th><th>Calls/s</th><th>Running</th><th>Done</th><th>Failed</th><th>Up</th></tr>')
            for w in workers:
                up = fmt_seconds(time.time() - float(w.get("started") or time.time()))
                out.append(f'<tr><td>{escape(str(w.get("queue")))}</td><td>{escape(str(w.get("host")))}</td>'
                           f'<td class="num">{w.get("pid")}</td><td class="num">{w.get("concurrency")}</td>'
                           f'<td class="num">{w.get("qps") or "-"}</td><td class="num">{_rate(w.get("rate"))}</td>'
                           f'<td class="num">{w.get("running")}</td><td class="num">{w.get("done")}</td>'
                           f'<td class="num">{w.get("failed")}</td><td class="num">{up}</td></tr>')
            out.append("</table>")
    out.append(f"<h2>Calls, last 60 s</h2>{chart}")
    return "".join(out)


def calls_page(page: Any, filters: dict[str, str], queues: list[str]) -> str:
    qopts = "".join(f'<option value="{escape(q)}"{" selected" if q == filters.get("queue") else ""}>{escape(q or "all queues")}</option>'
                    for q in ["", *queues])
    oopts = "".join(f'<option value="{o}"{" selected" if o == filters.get("outcome") else ""}>{o or "any outcome"}</option>'
                    for o in OUTCOMES)
    since = filters.get("since", "")
    sopts = "".join(f'<option value="{v}"{" selected" if v == since else ""}>{label}</option>' for v, label in
                    (("", "any time"), ("60", "last minute"), ("3600", "last hour"), ("86400", "last day")))
    form = (f'<form method="get" action="/calls" id="filters"><select name="queue">{qopts}</select> '
            f'<select name="outcome">{oopts}</select> <select name="since">{sopts}</select> '
            f'<input name="text" placeholder="text in arguments or error" value="{escape(filters.get("text", ""))}"> '
            '<button type="submit">Filter</button></form>')
    rows = []
    for r in page.rows:
        args = json.dumps(r.get("args"), default=str)
        err = f'{r.get("error_type")}: {r.get("error")}' if r.get("error_type") else ""
        took = (r["finished_at"] - r["started_at"]) if r.get("started_at") else None
        link = escape(r.get("call_id") or "")
        rows.append(f'<tr class="call"><td><a href="/calls/{link}">{link[:12]}</a></td><td>{escape(r["queue"])}</td>'
                    f'<td>{escape(r["function"].rsplit(".", 1)[-1])}</td><td class="outcome-{escape(r["outcome"])}">'
                    f'{escape(r["outcome"])}</td><td class="num">{r["attempt"]}</td><td>{escape(args[:80])}</td>'
                    f'<td>{escape(err[:80])}</td><td>{time.strftime("%H:%M:%S", time.localtime(r["finished_at"]))}</td>'
                    f'<td class="num">{"-" if took is None else f"{took * 1000:.1f} ms"}</td></tr>')
    pages = ""
    if page.total > page.limit:
        base = {k: v for k, v in filters.items() if v}
        last = (page.total - 1) // page.limit
        current = page.offset // page.limit
        links = []
        for label, number in (("first", 0), ("previous", current - 1), ("next", current + 1), ("last", last)):
            if 0 <= number <= last and number != current:
                links.append(f'<a href="/calls?{urlencode({**base, "page": number})}">{label}</a>')
        pages = f'<p class="pager">page {current + 1} of {last + 1} {"".join(links)}</p>'
    table = ('<table id="calls"><tr><th>Id</th><th>Queue</th><th>Function</th><th>Outcome</th><th>Attempt</th>'
             '<th>Arguments</th><th>Error</th><th>Finished</th><th>Took</th></tr>' + "".join(rows) + "</table>")
    return f'{form}<p><span id="total">{page.total}</span> call outcome(s)</p>{table}{pages}'


def detail_page(call_id: str, attempts: list[dict[str, Any]]) -> str:
    if not attempts:
        return f'<p>No call {escape(call_id)} in the history.</p>'
    out = []
    last = attempts[-1]
    out.append(f'<p>Queue <b>{escape(last["queue"])}</b>, function <code>{escape(last["function"])}</code>, '
               f'parent {escape(last.get("parent") or "-")}</p>')
    out.append(f'<h2>Arguments</h2><pre id="args">{escape(json.dumps(last.get("args"), indent=2, default=str))}</pre>')
    out.append('<h2>Attempts</h2><table id="attempts"><tr><th>Attempt</th><th>Outcome</th><th>Host</th><th>PID</th>'
               '<th>Published</th><th>Waited</th><th>Ran</th></tr>')
    for a in attempts:
        wait = (a["started_at"] - a["published_at"]) if a.get("started_at") and a.get("published_at") else None
        ran = (a["finished_at"] - a["started_at"]) if a.get("started_at") else None
        published = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(a["published_at"])) if a.get("published_at") else "-"
        out.append(f'<tr><td class="num">{a["attempt"]}</td><td class="outcome-{escape(a["outcome"])}">{escape(a["outcome"])}</td>'
                   f'<td>{escape(str(a.get("host")))}</td><td class="num">{a.get("pid")}</td><td>{published}</td>'
                   f'<td class="num">{"-" if wait is None else f"{wait * 1000:.1f} ms"}</td>'
                   f'<td class="num">{"-" if ran is None else f"{ran * 1000:.1f} ms"}</td></tr>')
    out.append("</table>")
    if last["outcome"] == "done":
        out.append(f'<h2>Result</h2><pre id="result">{escape(json.dumps(last.get("result"), indent=2, default=str))}</pre>')
    for a in attempts:
        if a.get("error_type"):
            out.append(f'<h2>Error (attempt {a["attempt"]})</h2><p class="outcome-dead" id="error-{a["attempt"]}">'
                       f'{escape(a["error_type"])}: {escape(a.get("error") or "")}</p>'
                       f'<pre class="traceback">{escape(a.get("traceback") or "")}</pre>')
    return "".join(out)


def dlq_page(index: int, queue: str, dlq: str, size: int, letters: list[Any]) -> str:
    replay_all = _button("replay", "Replay all", index, queue) if letters else ""
    purge = _button("dlq-purge", "Purge dead letters", index, queue,
                    confirm=f"Delete every dead letter of {queue}?") if letters else ""
    out = [f'<p>Dead-letter queue <b>{escape(dlq)}</b>: <span id="dlq-size">{size}</span> call(s). {replay_all} {purge}</p>',
           '<table id="dead"><tr><th>Id</th><th>Reason</th><th>Error</th><th>Attempts</th><th>When</th>'
           '<th>Arguments</th><th></th></tr>']
    for d in letters:
        err = f"{d.error_type}: {d.error}" if d.error_type else ""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.at)) if d.at else "-"
        button = _button("replay", "Replay", index, queue, extra={"id": d.id}) if d.id and d.replayable else ""
        out.append(f'<tr class="dead" data-id="{escape(d.id or "")}"><td>{escape((d.id or "-")[:12])}</td>'
                   f'<td>{escape(d.reason or "")}</td><td>{escape(err)}</td><td class="num">{d.attempt + 1}</td>'
                   f'<td>{when}</td><td>{escape(json.dumps(d.kwargs, default=str)[:100])}</td><td>{button}</td></tr>')
    out.append("</table>")
    return "".join(out)


def dlq_index(items: list[tuple[int, str, int]]) -> str:
    if not items:
        return '<p class="muted">No queues known yet.</p>'
    rows = "".join(f'<tr><td><a href="/dlq?{urlencode({"queue": q, "broker": b})}">{escape(q)}</a></td>'
                   f'<td class="num">{n}</td></tr>' for b, q, n in items)
    return f'<table id="dlqs"><tr><th>Queue</th><th>Dead letters</th></tr>{rows}</table>'


def charts_page(history: Any, queue: str | None, queues: list[str]) -> str:
    opts = "".join(f'<option value="{escape(q)}"{" selected" if q == (queue or "") else ""}>{escape(q or "all queues")}</option>'
                   for q in ["", *queues])
    out = [f'<form method="get" action="/charts"><select name="queue">{opts}</select> <button>Show</button></form>',
           '<div class="charts">']
    for i, (title, bucket, n) in enumerate(SERIES):
        out.append(bar_chart(history.counts(bucket, n, queue=queue or None), title=title, bucket=bucket,
                             chart_id=f"chart-{i}"))
    out.append("</div>")
    return "".join(out)


HISTORY_OFF = ('<p class="flash err">Call history is off, so there are no calls to show. Start workers with '
               "CALLQ_HISTORY_URL set (e.g. CALLQ_HISTORY_URL=1 for the default sqlite file) and pass the "
               "same URL to callq dashboard --history.</p>")
