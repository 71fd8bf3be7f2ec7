"""Feature dictionaries and the search index load in the background at start-up."""

from __future__ import annotations

from fastapi.testclient import TestClient
from helpers.server import tiny_settings
from helpers.waiting import wait_until

from glassbox.app import create_app
from glassbox.engine.async_engine import AsyncLLMEngine
from glassbox.runtime import load_engine


def test_features_are_warmed_up_without_a_request(tiny_model_dir, tmp_path) -> None:
    settings = tiny_settings(tiny_model_dir, tmp_path).model_copy(
        update={"warm_features": True, "warm_features_after": 0.0}
    )
    engine = AsyncLLMEngine(lambda: load_engine(settings)[0])
    try:
        with TestClient(create_app(settings, engine=engine)) as tc:
            features = tc.app.state.features
            # built with no features request made
            assert wait_until(lambda: features.is_ready, timeout=60, poll=0.1)
            r = tc.post("/features/search", json={"query": "pirate", "session_id": "s", "top_k": 3})
            assert r.status_code == 200 and len(r.json()) == 3
    finally:
        engine.shutdown()
