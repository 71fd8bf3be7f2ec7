"""The page's tests: one Chromium per module, a fresh browser context per test whose
console errors and uncaught exceptions fail the test."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from helpers.browser import Watched, launch, watched_page
from helpers.server import LiveServer
from playwright.sync_api import Browser, sync_playwright


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Module-scoped: Playwright's sync API runs an event loop on the main thread while it is
    open, and every asyncio test run after it in the same session would fail to start its
    own ("cannot be called from a running event loop")."""
    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    with watched_page(browser) as w:
        yield w
        assert w.errors == [], "the page logged errors:\n" + "\n".join(w.errors)


@pytest.fixture(scope="session")
def features_built(tiny_server: LiveServer) -> LiveServer:
    """The tiny server with its feature dictionaries and search index built (the first
    features request builds them: about a minute on 2 busy cores), so that the page's
    feature views answer within the browser's timeouts."""
    r = httpx.post(
        f"{tiny_server.base_url}/features/search",
        json={"query": "pirate", "session_id": "warm-up", "top_k": 1},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    return tiny_server
