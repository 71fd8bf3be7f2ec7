"""/health reports the engine's own counters; once the engine is dead, /health and every
generation route answer 503 `engine_dead` in OpenAI's error shape, never a 500."""

from __future__ import annotations

import httpx
import pytest
from helpers.http import create_state
from helpers.server import TINY_NAME, LiveServer, running, tiny_settings
from helpers.waiting import wait_until

USER = [{"role": "user", "content": "Tell me a long story"}]
COUNTERS = ("running", "waiting", "kv_blocks_used", "kv_blocks_total")


def health(http: httpx.Client) -> dict:
    r = http.get("/health")
    assert r.status_code == 200, r.text
    return r.json()


def test_idle_health_reports_the_engines_counters(slow_server: LiveServer) -> None:
    stats = slow_server.wait_idle(slow_server.engine.stats()["kv_blocks_used"])
    with httpx.Client(base_url=slow_server.base_url, timeout=30) as http:
        body = health(http)
    assert body == {
        "status": "ok",
        "model": TINY_NAME,
        **{k: stats[k] for k in COUNTERS},
    }
    assert body["running"] == 0 and body["waiting"] == 0
    assert body["kv_blocks_total"] > 0


def test_health_counts_a_running_generation(slow_server: LiveServer) -> None:
    baseline = slow_server.wait_idle(slow_server.engine.stats()["kv_blocks_used"])
    body = {"messages": USER, "max_tokens": 400, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=slow_server.base_url, timeout=30) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            assert wait_until(lambda: slow_server.engine.stats()["running"] == 1)
            during = health(http)
        assert during["running"] == 1
        assert during["waiting"] == 0
        assert during["kv_blocks_total"] == baseline["kv_blocks_total"]
        assert during["kv_blocks_used"] > baseline["kv_blocks_used"]
        after = slow_server.wait_idle(baseline["kv_blocks_used"])  # the stream was hung up
        assert health(http) == {
            "status": "ok",
            "model": TINY_NAME,
            **{k: after[k] for k in COUNTERS},
        }
        assert after["kv_blocks_used"] == baseline["kv_blocks_used"]


@pytest.fixture(scope="module")
def dead(tiny_model_dir, tmp_path_factory) -> tuple[LiveServer, str]:
    """A server of its own whose engine has been shut down, and a state made before that."""
    settings = tiny_settings(tiny_model_dir, tmp_path_factory.mktemp("dead"))
    with running(settings) as server:
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            state_id = create_state(http)["id"]
            assert health(http)["status"] == "ok"
        server.engine.shutdown()
        yield server, state_id


def assert_engine_dead(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    body = r.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "engine_dead"
    assert error["type"] == "service_unavailable_error"
    assert error["message"] == "the engine has stopped"


def test_health_is_503_engine_dead(dead) -> None:
    server, _ = dead
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        assert_engine_dead(http.get("/health"))


ROUTES = [
    ("/v1/chat/completions", {"messages": USER, "max_tokens": 4}),
    ("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 4}),
    ("/generate/token", {"max_tokens": 4}),
    ("/v1/chat/completions", {"messages": USER, "max_tokens": 4, "stream": True}),
    ("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 4, "stream": True}),
    ("/generate/token", {"max_tokens": 4, "stream": True}),
    ("/api/inference/v1/chat/completions", {"messages": USER, "max_completion_tokens": 4}),
    (
        "/api/inference/v1/chat/completions",
        {"messages": USER, "max_completion_tokens": 4, "stream": True},
    ),
]


@pytest.mark.parametrize(
    ("path", "body"), ROUTES, ids=[f"{p}{'-stream' if b.get('stream') else ''}" for p, b in ROUTES]
)
def test_generation_routes_are_503_engine_dead(dead, path: str, body: dict) -> None:
    server, state_id = dead
    if path == "/generate/token":
        body = {**body, "state_id": state_id}
    if path.startswith("/api/inference"):
        body = {**body, "model": TINY_NAME}
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        assert_engine_dead(http.post(path, json=body))
