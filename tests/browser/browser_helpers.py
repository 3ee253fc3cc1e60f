"""Helpers of the browser tests: Debian's Chromium, a live server, and a recorded page visit."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

import pytest
import uvicorn

from service.main import server_config
from service.settings import EMBEDDED_MODEL_DIR, Settings
from tests.service.service_helpers import wait_for

if TYPE_CHECKING:
    from playwright.sync_api import Page

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
SERVED_VERSION = 7  # the embedded default model, republished under a version of its own
BROWSER_ARGS = [
    "--no-sandbox",  # required as root
    "--disable-gpu",
    # Nothing of Chromium's own may reach for the internet.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 740}


def missing(what: str) -> NoReturn:
    """Fail under CI=true, where the browser must be installed; skip elsewhere."""
    message = (
        f"{what} is missing: the browser tests need Debian's chromium "
        "(`apt-get install -y --no-install-recommends chromium chromium-driver`, or "
        "`bash .ci/setup-browser.sh`) and the Playwright package "
        "(`pip install playwright==1.65.2`; never `playwright install`)"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message, allow_module_level=True)


def playwright_expect() -> Any:
    """Playwright's `expect`; a test module without Playwright is skipped (failed in CI)."""
    try:
        from playwright.sync_api import expect
    except ImportError:
        missing("the playwright package")
    return expect


def serve(settings: Settings) -> Iterator[str]:
    """Run the app as `vae-serve` does (uvloop, httptools, lifespan) in a thread; yield its URL."""
    server = uvicorn.Server(server_config(settings))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=30, what="uvicorn to start")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def embedded_version_dir() -> Path:
    """The embedded default model's version directory (the highest, as the service picks)."""
    versions = [p for p in (EMBEDDED_MODEL_DIR / "vae").iterdir() if p.name.isdigit()]
    return max(versions, key=lambda p: int(p.name))


def is_local(url: str) -> bool:
    """Served from 127.0.0.1, or made in the page itself (data: and blob: URLs)."""
    parts = urlsplit(url)
    return parts.scheme in ("data", "blob") or parts.hostname == "127.0.0.1"


class Visit:
    """A page in a fresh browser context, with what it requested and what it threw."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.requests: list[str] = []
        self.blocked: list[str] = []
        self.errors: list[str] = []

    def screenshot(self, name: str) -> Path:
        """Save the whole page as test-artifacts/browser/<name>.png."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=path, full_page=True)
        return path
