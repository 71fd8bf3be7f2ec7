"""Models of other backends in the settings: parsed from GLASSBOX_MODELS, checked at start,
and turned into the registry's entries and the backends themselves (runtime.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from glassbox.backends.openai_upstream import OpenAIUpstreamBackend
from glassbox.config import Settings
from glassbox.runtime import build_backend, served_models

MODELS = """[
  {"name": "big", "backend": "openai-upstream", "aliases": ["gpt-4o"], "retries": 4,
   "upstreams": [{"base_url": "http://a:8000/v1", "model": "llama-70b", "api_key": "k"},
                 {"base_url": "http://b:8000/v1"}]},
  {"name": "cpp", "backend": "llama-cpp", "path": "/models/x.gguf"}
]"""


async def test_an_upstream_model_from_the_environment(monkeypatch):
    monkeypatch.setenv("GLASSBOX_MODELS", MODELS)
    settings = Settings()
    big, cpp = served_models(settings)
    assert (big.name, big.backend, big.aliases, big.capabilities) == (
        "big",
        "openai-upstream",
        ("gpt-4o",),
        frozenset(),
    )
    assert (cpp.backend, cpp.max_model_len) == ("llama-cpp", 4096)
    backend = build_backend(settings.models[0], settings)
    try:
        assert isinstance(backend, OpenAIUpstreamBackend) and backend.retries == 4
        chain = [(u.base_url, u.model, u.api_key) for u in backend.upstreams]
        # an upstream without its own model name uses the served name
        assert chain == [("http://a:8000/v1", "llama-70b", "k"), ("http://b:8000/v1", "big", None)]
    finally:
        await backend.aclose()


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ({"name": "x", "backend": "openai-upstream"}, "needs 'upstreams'"),
        ({"name": "x", "backend": "llama-cpp"}, "needs 'path'"),
        ({"name": "x", "backend": "vllm", "upstreams": []}, "'openai-upstream' or 'llama-cpp'"),
        ({"name": "x", "backend": "llama-cpp", "path": "a", "typo": 1}, "Extra inputs"),
    ],
)
def test_a_bad_model_entry_is_refused(entry, error):
    with pytest.raises(ValidationError, match=error):
        Settings(models=[entry])
