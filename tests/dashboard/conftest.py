"""Serve the dashboard with uvicorn in a thread; drive Debian's chromium with Playwright."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from callq.testing.servers import free_port

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[2]


class Served:
    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's chromium, installed by the project's script when missing (never `playwright install`)."""
    if not os.path.exists(CHROMIUM):
        result = subprocess.run(["bash", str(ROOT / "scripts" / "chromium.sh")], capture_output=True, text=True)
        if result.returncode != 0 or not os.path.exists(CHROMIUM):
            pytest.fail(f"could not install chromium with scripts/chromium.sh:\n{result.stdout}\n{result.stderr}")
    assert shutil.which(CHROMIUM)
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path, args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()
