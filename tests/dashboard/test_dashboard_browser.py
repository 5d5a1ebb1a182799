"""The dashboard in a real headless chromium: real calls, their numbers, filters, replay,
pause/resume, and an action without the token refused."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import callq
from callq.dashboard.app import create_app
from callq.history import HistoryStore, disable, enable
from callq_redis.testing import REDIS, fresh_prefix
from tests.dashboard.conftest import Served

TOKEN = "test-token-0123456789"
SHOTS = os.environ.get("CALLQ_SCREENSHOTS")  # e.g. docs/img: refresh the README's screenshots


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    history_url = f"sqlite:///{tmp_path_factory.mktemp('hist') / 'history.db'}"
    with fresh_prefix() as prefix:
        url = f"{REDIS}?prefix={prefix}"
        history = enable(history_url, flush_interval=0.1)
        q = f"web-{uuid.uuid4().hex[:6]}"
        broken = {"on": True}

        @callq.task(q, broker=url, max_retries=0)
        def resize(n: int, name: str = "") -> int:
            if broken["on"] and n % 6 == 0:
                raise RuntimeError(f"boom-{n}")
            time.sleep(0.01)
            return n * 10

        handles = [resize.push(n, name=f"img{n}.png") for n in range(30)]
        failing = [h for n, h in enumerate(handles) if n % 6 == 0]
        try:
            resize.consume()
            for n, h in enumerate(handles):
                if n % 6:
                    assert h.result(timeout=20) == n * 10
            for h in failing:
                with pytest.raises(callq.RemoteError):
                    h.result(timeout=20)
            assert history.flush(10)
            store = HistoryStore(history_url)
            app = create_app([url], store, token=TOKEN)
            with Served(app) as served:
                yield {"url": served.url, "queue": q, "broker": url, "broken": broken, "failing": failing,
                       "task": resize, "history": history}
        finally:
            resize.stop()
            disable()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    p = context.new_page()
    p.on("dialog", lambda d: d.accept())
    p.set_default_timeout(10_000)
    try:
        yield p
    finally:
        context.close()


def _login(page: Any, base: str) -> None:
    page.goto(f"{base}/login?token={TOKEN}")
    assert page.url.rstrip("/") == base


def test_queues_page_shows_the_numbers(world: dict[str, Any], page: Any) -> None:
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(world["url"] + "/")
    row = page.locator(f'#queues tr[data-queue="{world["queue"]}"]')
    assert row.locator("td.dlq").inner_text() == "5"
    assert row.locator("td.size").inner_text() == "0"
    assert row.locator("td.consumers").inner_text() == "1"
    assert row.locator("td.paused").inner_text() == "no"
    assert page.locator("#consumers").inner_text().count(world["queue"]) == 1
    assert int(page.locator('span.total[data-chart="chart-now"]').inner_text()) >= 30
    assert int(page.locator('span.failed[data-chart="chart-now"]').inner_text()) >= 5
    assert "redis://" in page.content() and all(u.startswith(world["url"]) for u in requests)  # nothing from elsewhere
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / "dashboard.png"), full_page=True)


def test_calls_filter_and_detail(world: dict[str, Any], page: Any) -> None:
    page.goto(world["url"] + "/calls?queue=" + world["queue"])
    assert page.locator("#total").inner_text() == "30"
    page.select_option('select[name="outcome"]', "dead")
    page.click('#filters button[type="submit"]')
    page.wait_for_url("**outcome=dead**")
    assert page.locator("#total").inner_text() == "5"
    assert page.locator("#calls tr.call").count() == 5
    page.fill('input[name="text"]', "boom-12")
    page.click('#filters button[type="submit"]')
    page.wait_for_url("**text=boom-12**")
    assert page.locator("#total").inner_text() == "1"
    if SHOTS:
        page.goto(world["url"] + "/calls?queue=" + world["queue"])
        page.screenshot(path=str(Path(SHOTS) / "dashboard-calls.png"), full_page=True)
        page.go_back()
    page.locator("#calls tr.call a").first.click()
    page.wait_for_url("**/calls/**")
    assert "RuntimeError: boom-12" in page.locator("#error-0").inner_text()
    assert "raise RuntimeError" in page.locator("pre.traceback").inner_text()
    assert '"n": 12' in page.locator("#args").inner_text()
    assert page.locator("#attempts tr").count() == 2  # header + one attempt


def test_charts_page(world: dict[str, Any], page: Any) -> None:
    page.goto(world["url"] + "/charts?queue=" + world["queue"])
    assert page.locator("svg.chart").count() == 4
    for i in range(4):
        assert page.locator(f'span.total[data-chart="chart-{i}"]').inner_text() == "30"
        assert page.locator(f'span.failed[data-chart="chart-{i}"]').inner_text() == "5"


def test_action_without_token_is_refused(world: dict[str, Any], page: Any) -> None:
    page.goto(world["url"] + "/")
    page.click(f'button[data-action="pause"][data-queue="{world["queue"]}"]')
    assert "Action refused" in page.locator("#refused").inner_text()
    assert not world["task"].is_paused()


def test_pause_resume_and_replay_with_token(world: dict[str, Any], page: Any) -> None:
    base, q = world["url"], world["queue"]
    _login(page, base)
    page.click(f'button[data-action="pause"][data-queue="{q}"]')
    assert f"paused {q}" in page.locator(".flash").inner_text()
    assert page.locator(f'#queues tr[data-queue="{q}"] td.paused').inner_text() == "yes"
    assert world["task"].is_paused()
    page.click(f'button[data-action="resume"][data-queue="{q}"]')
    assert page.locator(f'#queues tr[data-queue="{q}"] td.paused').inner_text() == "no"
    assert not world["task"].is_paused()

    world["broken"]["on"] = False  # the bug is fixed: replay the dead letters
    page.goto(f"{base}/dlq?queue={q}&broker=0")
    assert page.locator("#dlq-size").inner_text() == "5"
    assert page.locator("#dead tr.dead").count() == 5
    first = world["failing"][0]
    page.click(f'#dead tr.dead[data-id="{first}"] button[data-action="replay"]')
    assert "replayed 1 call(s)" in page.locator(".flash").inner_text()
    assert first.result(timeout=20) == 0
    page.click('button[data-action="replay"]:has-text("Replay all")')
    assert "replayed 4 call(s)" in page.locator(".flash").inner_text()
    assert [h.result(timeout=20) for h in world["failing"][1:]] == [60, 120, 180, 240]
    page.goto(f"{base}/dlq?queue={q}&broker=0")
    assert page.locator("#dlq-size").inner_text() == "0"
