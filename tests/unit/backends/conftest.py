"""The llama-cpp backend on the bundled GGUF (a small context: each test takes seconds)."""

from __future__ import annotations

import asyncio

import pytest


def _bundled_llama(**kwargs):
    """A `LlamaCppBackend` on the bundled GGUF; the test is skipped without llama-cpp-python
    or the bundled model."""
    pytest.importorskip("llama_cpp")
    from glassbox.backends.llama_cpp import LlamaCppBackend
    from glassbox.models.loader import ModelNotFoundError, bundled_gguf

    try:
        path = bundled_gguf()
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))
    return LlamaCppBackend(path, **{"n_ctx": 512, "seed": 0, **kwargs})


@pytest.fixture(scope="module")
def llama_backend():
    backend = _bundled_llama()
    yield backend
    asyncio.run(backend.aclose())


@pytest.fixture(scope="module")
def llama_logprobs_backend():
    """The same model loaded with `logits_all=True`, which llama.cpp's logprobs need."""
    backend = _bundled_llama(n_ctx=256, logits_all=True)
    yield backend
    asyncio.run(backend.aclose())
