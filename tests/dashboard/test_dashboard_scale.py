"""The dashboard stays usable with 100,000 history rows (server-side pagination), and its
token rules: loopback reads are open, actions need the token, a public bind needs one."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from callq.dashboard.app import create_app
from callq.dashboard.server import serve
from callq.errors import ConfigError
from callq.history import HistoryStore
from tests.dashboard.conftest import Served


def _get(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, str, float]:
    started = time.monotonic()
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode(), time.monotonic() - started
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), time.monotonic() - started


@pytest.mark.slow
def test_100k_rows_paginated(tmp_path: Path, mem_url: str) -> None:
    store = HistoryStore(f"sqlite:///{tmp_path / 'big.db'}")
    now = time.time()
    rows = [{"call_id": f"{i:032x}", "queue": f"q{i % 4}", "function": "app.work", "args": f'{{"n": {i}}}',
             "outcome": "dead" if i % 10 == 0 else "done", "attempt": 0, "finished_at": now - i * 0.5,
             "error_type": "ValueError" if i % 10 == 0 else None, "error": f"bad {i}" if i % 10 == 0 else None}
            for i in range(100_000)]
    for start in range(0, len(rows), 20_000):
        store.insert_many(rows[start:start + 20_000])
    with Served(create_app([mem_url], store, token="x" * 16)) as served:
        for path in ("/calls", "/calls?page=1999", "/calls?queue=q1&outcome=dead", "/calls?text=bad+4242",
                     "/charts", "/"):
            status, body, took = _get(served.url + path)
            assert status == 200, (path, body[:500])
            assert took < 5, (path, took)
            assert body.count('<tr class="call">') <= 50
        _, body, _ = _get(served.url + "/calls")
        assert '<span id="total">100000</span>' in body and "page 1 of 2000" in body
        _, body, _ = _get(served.url + "/calls?queue=q1&outcome=dead")
        assert '<span id="total">0</span>' in body  # dead rows are i % 10 == 0, never queue q1 (i % 4 == 1)
        _, body, _ = _get(served.url + "/calls?queue=q2&outcome=dead")
        assert '<span id="total">5000</span>' in body
        _, body, _ = _get(served.url + "/calls?text=bad+4242")
        assert '<span id="total">1</span>' in body


def test_token_rules(tmp_path: Path, mem_url: str) -> None:
    with Served(create_app([mem_url], None, token="secret-token-1")) as served:
        status, body, _ = _get(served.url + "/")
        assert status == 200 and "read-only" in body
        form = b"action=pause&broker=0&queue=zz"
        status, body, _ = _get(served.url + "/action", data=form)
        assert status == 403 and "Action refused" in body
        status, _, _ = _get(served.url + "/action", data=form + b"&token=wrong-token")
        assert status == 403
        status, body, _ = _get(served.url + "/action", data=form, headers={"X-Callq-Token": "secret-token-1"})
        assert status == 200 and "paused zz" in body
        status, _, _ = _get(served.url + "/login?token=nope")
        assert status == 403
    with Served(create_app([mem_url], None, token="secret-token-1", public=True)) as served:
        status, _, _ = _get(served.url + "/")
        assert status == 401
        status, _, _ = _get(served.url + "/", headers={"X-Callq-Token": "secret-token-1"})
        assert status == 200
    with pytest.raises(ConfigError, match="needs a token"):
        serve(brokers=[mem_url], history=None, host="0.0.0.0", port=1)
