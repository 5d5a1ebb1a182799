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
    with Served(create_app(["amqp://guest:hunter22@127.0.0.1:5672/"], None, token="secret-token-1")) as served:
        status, body, _ = _get(served.url + "/")
        assert status == 200 and "amqp://guest:***@127.0.0.1:5672/" in body and "hunter22" not in body
        assert "cannot reach this broker" in body  # a wrong password: the error shows, masked
    with pytest.raises(ConfigError, match="needs a token"):
        serve(brokers=[mem_url], history=None, host="0.0.0.0", port=1)


def test_cli_dashboard_serves_and_prints_a_token(tmp_path: Path) -> None:
    import os
    import re
    import subprocess
    import sys

    from tests.dashboard.conftest import free_port

    port = free_port()
    env = {**os.environ, "CALLQ_DASHBOARD_TOKEN": ""}
    proc = subprocess.Popen([sys.executable, "-m", "callq", "dashboard", "--broker", "memory://cli", "--port", str(port),
                             "--history", f"sqlite:///{tmp_path / 'h.db'}"],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stderr.readline()  # type: ignore[union-attr]
        token = re.search(r"login\?token=(\S+)\)", line)
        assert token and len(token.group(1)) >= 16, line
        deadline = time.monotonic() + 15
        while True:
            try:
                status, body, _ = _get(f"http://127.0.0.1:{port}/calls")
                break
            except OSError:
                assert time.monotonic() < deadline, "dashboard did not answer"
                time.sleep(0.1)
        assert status == 200 and '<span id="total">0</span>' in body
        status, _, _ = _get(f"http://127.0.0.1:{port}/action", data=b"action=pause&broker=0&queue=x",
                            headers={"X-Callq-Token": token.group(1)})
        assert status == 200
    finally:
        proc.terminate()
        proc.wait(10)
    bad = subprocess.run([sys.executable, "-m", "callq", "dashboard", "--host", "0.0.0.0", "--broker", "memory://"],
                         capture_output=True, text=True, env=env, timeout=30)
    assert bad.returncode == 2 and "needs a token" in bad.stderr
