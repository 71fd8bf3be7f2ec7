"""Shared fixtures: a tiny random Llama served live by uvicorn, clients for it, and a
PostgreSQL server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from helpers.hangs import print_unfinished_tasks
from helpers.server import LiveServer, live, tiny_settings
from helpers.tiny_model import build_tiny_model

from glassbox.logs import configure_logging

# JSON logs as the server writes them; tests that read log lines attach their own stream.
configure_logging("WARNING")


_HANG_PRINT = pytest.StashKey[threading.Timer]()


def pytest_timeout_set_timer(item: pytest.Item, settings) -> None:
    """pytest-timeout's hook, called with the test's resolved timeout before it sets its own
    timer (this returns None, so it still does): 15 s before that timer fails the test, the
    test prints its unfinished asyncio tasks (helpers/hangs.py), which shows where it waits."""
    timer = threading.Timer(
        max(settings.timeout - 15, settings.timeout * 0.9), print_unfinished_tasks
    )
    timer.daemon = True
    timer.start()
    item.stash[_HANG_PRINT] = timer


def pytest_timeout_cancel_timer(item: pytest.Item) -> None:
    timer = item.stash.get(_HANG_PRINT, None)
    if timer is not None:
        timer.cancel()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    yield from live(tiny_settings(tiny_model_dir, tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def slow_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny model with 20 ms added to every engine step, so a generation of a few hundred
    tokens reliably outlasts a client that hangs up early."""
    settings = tiny_settings(tiny_model_dir, tmp_path_factory.mktemp("cache"))
    yield from live(settings, step_delay=0.02)


@pytest.fixture
def client(tiny_server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=tiny_server.base_url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture
def aclient(tiny_server: LiveServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=tiny_server.base_url + "/v1", api_key="x", max_retries=0)


@pytest.fixture
def http(tiny_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tiny_server.base_url, timeout=30) as c:
        yield c


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of the test session's own (tests/pg_server.py): its URL."""
    from helpers.pg_server import running_postgres  # psycopg is imported only by tests that use it

    with running_postgres() as url:
        yield url


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--no-skips",
        action="store_true",
        help="fail the run if any test is skipped (make test: the Makefile installs every "
        "dependency a test needs, so a skip would hide a test that never ran)",
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not session.config.getoption("--no-skips") or exitstatus != pytest.ExitCode.OK:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        reporter.write_line(f"--no-skips: {len(skipped)} test(s) skipped; a skip is not a pass")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
