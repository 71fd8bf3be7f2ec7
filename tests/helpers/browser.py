"""A real browser for the page's tests: Debian's `chromium` (installed with apt-get when
missing) driven by Playwright for Python, whose own browser download cannot be fetched here;
and a page that records every console error and uncaught exception."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def chromium_binary() -> str:
    if not Path(CHROMIUM).exists():
        install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
        if subprocess.run(install, capture_output=True).returncode != 0:
            # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update"], check=True, capture_output=True)
            subprocess.run(install, check=True, capture_output=True)
    if not Path(CHROMIUM).exists():
        found = shutil.which("chromium")
        raise RuntimeError(f"chromium is not at {CHROMIUM} (which: {found}); apt-get failed")
    return CHROMIUM


def launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=chromium_binary(), headless=True)


class Watched:
    """A page and the console errors and page errors it has logged."""

    def __init__(self, page: Page):
        self.page = page
        self.errors: list[str] = []
        self.allowed: list[re.Pattern[str]] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and not any(p.search(message.text) for p in self.allowed):
            self.errors.append(f"console.error: {message.text} ({message.location})")

    def allow(self, pattern: str) -> None:
        """A console error this test expects (the browser logs a 401 it was meant to get)."""
        self.allowed.append(re.compile(pattern))


@contextmanager
def watched_page(browser: Browser, width: int = 1280, height: int = 860) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(30_000)
    try:
        yield Watched(context.new_page())
    finally:
        context.close()


def screenshot(page: Page, view: str) -> Path:
    """docs/screenshots/<view>.png: the README shows them."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{view}.png"
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(path))
    return path
