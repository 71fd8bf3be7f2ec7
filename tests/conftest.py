"""Shared fixtures: a tiny random Llama served live by uvicorn, clients for it, and a
PostgreSQL server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from helpers.hangs import tasks_printed_after
from helpers.server import LiveServer, live, tiny_settings
from helpers.tiny_model import build_tiny_model

from glassbox.logs import configure_logging

# JSON logs as the server writes them; tests that read log lines attach their own stream.
configure_logging("WARNING")


@pytest.fixture(autouse=True)
def _tasks_printed_before_the_timeout(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test still running shortly before pytest-timeout fails it prints its unfinished
    asyncio tasks (helpers/hangs.py): the failure then shows where it waits."""
    marker = request.node.get_closest_marker("timeout")
    timeout = float(
        (marker.args[0] if marker and marker.args else None)
        or request.config.getoption("timeout", None)
        or request.config.getini("timeout")
        or 0
    )
    if timeout <= 0:
        yield
        return
    with tasks_printed_after(max(timeout - 15, timeout * 0.9)):
        yield


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
