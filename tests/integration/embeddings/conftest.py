"""Fixtures of the embeddings tests: a live glassbox whose /v1/embeddings serves the bundled
all-MiniLM-L6-v2 (the session's tiny-model server: the embedding model is the same whatever
the chat model)."""

from __future__ import annotations

import pytest
from helpers.server import LiveServer


@pytest.fixture
def embeddings_server(tiny_server: LiveServer) -> LiveServer:
    return tiny_server
