"""Fixtures of the features tests."""

from __future__ import annotations

import pytest

from glassbox.embeddings.embedder import LocalEmbedder
from glassbox.features.search import EmbedderEncoder


def _no_engine(fn):
    raise AssertionError("the features unit tests call encode directly, never the engine")


@pytest.fixture(scope="session")
def embedder() -> LocalEmbedder:
    """The bundled all-MiniLM-L6-v2, loaded once for the session in the test's thread; in
    float32, so that a text's vector does not depend on the batch it was in (bfloat16 rounds
    differently per batch shape) and the tests can compare scores to 1e-5."""
    embedder = LocalEmbedder(_no_engine, dtype="float32")
    embedder.load_here()
    return embedder


@pytest.fixture(scope="session")
def encoder(embedder: LocalEmbedder) -> EmbedderEncoder:
    """The search's encoder over it, as the feature service makes it."""
    return EmbedderEncoder(embedder)
