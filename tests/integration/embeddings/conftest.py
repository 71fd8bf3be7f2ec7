"""Fixtures of the embeddings tests: a live glassbox whose /v1/embeddings serves the bundled
all-MiniLM-L6-v2 (the session's tiny-model server: the embedding model is the same whatever
the chat model)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers.server import LiveServer

from glassbox.config import Settings
from glassbox.embeddings.service import EmbeddingService
from glassbox.runtime import build_embeddings


@pytest.fixture
def embeddings_server(tiny_server: LiveServer) -> LiveServer:
    return tiny_server


@pytest.fixture(scope="module")
def embedder() -> Iterator[EmbeddingService]:
    """The server's embedding service without a server: its model on one thread of its own
    (the engine thread's stand-in, as `glassbox worker` runs it), loaded once per module,
    before any test's event loop uses it."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="test-torch")

    def call(fn):
        return asyncio.get_running_loop().run_in_executor(pool, fn, None)

    service = build_embeddings(Settings(), call)
    asyncio.run(service.load())
    yield service
    pool.shutdown()
