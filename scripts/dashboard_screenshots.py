"""Refresh docs/img/dashboard*.png: real calls for ~20 s on three queues, then the dashboard's
pages in Debian's chromium (scripts/chromium.sh installs it).

    .venv/bin/python scripts/dashboard_screenshots.py [--out docs/img] [--seconds 20]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import callq  # noqa: E402
from callq.dashboard.app import create_app  # noqa: E402
from callq.history import HistoryStore, enable  # noqa: E402
from tests.dashboard.conftest import ARGS, CHROMIUM, Served  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "docs" / "img"))
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="callq-shots-")
    broker = f"sqlite:///{tmp}/broker.db"
    history_url = f"sqlite:///{tmp}/history.db"
    enable(history_url, flush_interval=0.2)

    @callq.task("resize", broker=broker, concurrency=8, max_retries=1, retry_backoff=0.1)
    def resize(image: str, width: int) -> dict:
        time.sleep(random.uniform(0.005, 0.03))
        if random.random() < 0.05:
            raise OSError(f"cannot read {image}: truncated file")
        return {"image": image, "width": width}

    @callq.task("emails", broker=broker, concurrency=4, qps=15, max_retries=0)
    def send_email(to: str, subject: str) -> str:
        time.sleep(random.uniform(0.02, 0.1))
        if to.endswith("@invalid"):
            raise ValueError(f"no MX record for {to.split('@')[1]}")
        return "sent"

    @callq.task("reports", broker=broker)
    def build_report(month: str) -> str:
        return month

    resize.consume()
    send_email.consume()
    build_report.pause()
    build_report.push_many((f"2026-{m:02d}",) for m in range(1, 13))
    deadline = time.monotonic() + args.seconds
    n = 0
    while time.monotonic() < deadline:
        resize.push_many((f"photos/{n + i}.jpg", random.choice((320, 640, 1280))) for i in range(random.randint(5, 25)))
        send_email.push(f"user{n}@{'invalid' if n % 17 == 0 else 'example.com'}", "Your order")
        n += 1
        time.sleep(0.25)
    time.sleep(2)
    store = HistoryStore(history_url)
    from playwright.sync_api import sync_playwright

    with Served(create_app([broker], store, token="screenshot-token")) as served, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(served.url + "/")
        page.screenshot(path=f"{args.out}/dashboard.png", full_page=True)
        page.goto(served.url + "/calls?queue=resize")
        page.screenshot(path=f"{args.out}/dashboard-calls.png")
        page.goto(served.url + "/charts")
        page.screenshot(path=f"{args.out}/dashboard-charts.png", full_page=True)
        browser.close()
    callq.stop_all()
    print(f"screenshots in {args.out}")


if __name__ == "__main__":
    main()
