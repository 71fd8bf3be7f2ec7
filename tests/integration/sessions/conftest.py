"""Fixtures of the session tests that build `SessionService`s themselves: a real Redis, the
tiny model on an engine of the module's own, and a factory of services on one database."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import pytest
from helpers.redis_server import running_redis
from helpers.server import tiny_settings
from sqlalchemy import event
from sqlalchemy.engine import Engine

from glassbox.backends.base import InferenceEngine
from glassbox.engine.async_engine import AsyncLLMEngine
from glassbox.metrics import Metrics
from glassbox.requests.generation import GenerationService
from glassbox.requests.registry import ModelRegistry
from glassbox.runtime import start_engine
from glassbox.sessions.locks import RedisLocks
from glassbox.sessions.service import SessionService
from glassbox.states.service import StateService
from glassbox.store import Database
from glassbox.structured.grammar import GrammarCompiler


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with running_redis() as url:
        yield url


@pytest.fixture(scope="module")
def local_engine(tiny_model_dir: Path, tmp_path_factory) -> Iterator[tuple[AsyncLLMEngine, str]]:
    """The tiny model on an engine of this module's own (its KV pool is not the live
    server's): the engine and the model's fingerprint."""
    settings = tiny_settings(tiny_model_dir, tmp_path_factory.mktemp("sessions-engine"))
    engine, resolved = start_engine(settings)
    yield engine, resolved.fingerprint
    engine.shutdown()


class Services:
    """Session services on one SQLite database and one state service, as processes sharing a
    database would be (each service has its own `Database` and, with Redis, its own locks
    and client)."""

    def __init__(self, engine: AsyncLLMEngine, fingerprint: str, root: Path):
        self.url = f"sqlite:///{root / 'glassbox.db'}"
        self.generation = GenerationService(engine, Metrics())
        self.db = Database(self.url)
        self.states = StateService(
            self.generation, self.db, root / "states", fingerprint, 8 * 1024 * 1024
        )
        self.grammars = GrammarCompiler(engine.tokenizer, engine.vocab_size)
        self.made: list[SessionService] = []

    def service(
        self,
        redis_url: str | None = None,
        models: ModelRegistry | None = None,
        backends: Mapping[str, InferenceEngine] | None = None,
    ) -> SessionService:
        locks = RedisLocks(redis_url) if redis_url else None
        service = SessionService(
            Database(self.url), self.states, self.generation, self.grammars, None, locks,
            models=models, backends=backends,
        )  # fmt: skip
        self.made.append(service)
        return service

    async def close(self) -> None:
        await self.states.flush()
        for service in self.made:
            if isinstance(service.locks, RedisLocks):
                await service.locks.close()
            service.db.close()
        self.db.close()


@pytest.fixture
async def services(local_engine, tmp_path: Path) -> AsyncIterator[Services]:
    engine, fingerprint = local_engine
    made = Services(engine, fingerprint, tmp_path)
    yield made
    await made.close()


_SESSION_READ = re.compile(r"\bFROM chat_sessions\b", re.IGNORECASE)


class SessionReads:
    """The SQL statements an engine runs that read the chat_sessions table."""

    def __init__(self, engine: Engine):
        self.statements: list[str] = []
        self.engine = engine
        event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith("SELECT") and _SESSION_READ.search(statement):
            self.statements.append(statement)

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._record)


@pytest.fixture
def session_reads() -> Iterator:
    """`session_reads(service)`: a fresh record of the SELECTs on chat_sessions its
    database runs from now on."""
    made: list[SessionReads] = []

    def start(service: SessionService) -> SessionReads:
        made.append(SessionReads(service.db.engine))
        return made[-1]

    yield start
    for reads in made:
        reads.close()
