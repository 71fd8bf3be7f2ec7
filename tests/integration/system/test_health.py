"""/health reports the engine's own counters and whether the features are built; once the
engine is dead, /health and every generation route answer 503 `engine_dead` in OpenAI's
error shape, never a 500."""

from __future__ import annotations

import io
import json

import httpx
import pytest
from helpers.http import create_state
from helpers.server import TINY_NAME, LiveServer, running, tiny_settings
from helpers.waiting import wait_until

from glassbox.features.concepts import load_concept_data
from glassbox.logs import configure_logging

USER = [{"role": "user", "content": "Tell me a long story"}]
COUNTERS = ("running", "waiting", "kv_blocks_used", "kv_blocks_total")


def health(http: httpx.Client) -> dict:
    r = http.get("/health")
    assert r.status_code == 200, r.text
    return r.json()


def features(server: LiveServer) -> dict:
    """What /health says of the server's features (whether another test built them)."""
    service = server.app.state.features
    return {"ready": service.is_ready, "stage": service.stage}


def test_idle_health_reports_the_engines_counters(slow_server: LiveServer) -> None:
    stats = slow_server.wait_idle(slow_server.engine.stats()["kv_blocks_used"])
    with httpx.Client(base_url=slow_server.base_url, timeout=30) as http:
        body = health(http)
    components = body.pop("components")
    assert components["database"] == {"ok": True} and "redis" not in components
    embeddings = components["embeddings"]
    assert embeddings["model"]["name"] == "all-MiniLM-L6-v2"
    assert embeddings["providers"]["local"]["state"] == "closed"
    assert {"hits", "misses", "size"} <= set(embeddings["cache"])
    assert body == {
        "status": "ok",
        "model": TINY_NAME,
        **{k: stats[k] for k in COUNTERS},
        "features": features(slow_server),
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
        body = health(http)
        body.pop("components")
        assert body == {
            "status": "ok",
            "model": TINY_NAME,
            **{k: after[k] for k in COUNTERS},
            "features": features(slow_server),
        }
        assert after["kv_blocks_used"] == baseline["kv_blocks_used"]


def test_features_go_from_pending_to_ready_when_a_request_needs_them(
    tiny_model_dir, tmp_path
) -> None:
    """The start-up warm-up is hours away: the first features request builds them at once,
    and /health says so."""
    settings = tiny_settings(tiny_model_dir, tmp_path).model_copy(
        update={"warm_features": True, "warm_features_after": 3600.0}
    )
    with running(settings) as server, httpx.Client(base_url=server.base_url, timeout=120) as http:
        assert health(http)["features"] == {"ready": False, "stage": "pending"}
        r = http.post("/features/search", json={"query": "pirate", "session_id": "s"})
        assert r.status_code == 200, r.text
        assert health(http)["features"] == {"ready": True, "stage": "ready"}


STAGES = ["pending", "dictionaries", "encoder", "index", "ready"]


def test_the_start_up_warm_up_makes_features_ready_by_itself(tiny_model_dir, tmp_path) -> None:
    settings = tiny_settings(tiny_model_dir, tmp_path).model_copy(
        update={"warm_features": True, "warm_features_after": 0.0}
    )
    seen: list[dict] = []
    logs = io.StringIO()
    configure_logging("INFO", stream=logs)
    try:
        with running(settings) as server:
            with httpx.Client(base_url=server.base_url, timeout=30) as http:

                def ready() -> bool:
                    seen.append(health(http)["features"])
                    return seen[-1]["ready"]

                assert wait_until(ready, timeout=300, poll=0.05), seen[-1]
    finally:
        configure_logging("WARNING")
    # one log line per stage, with its duration
    lines = [json.loads(line) for line in logs.getvalue().splitlines() if line.startswith("{")]
    progress = {x["event"]: x for x in lines if x["logger"] == "glassbox.features.service"}
    assert list(progress) == [
        "feature dictionaries built",
        "feature encoder loaded",
        "feature index built",
        "features ready",
    ]
    assert all(x["duration_ms"] >= 0 for x in progress.values() if "duration_ms" in x)
    assert progress["feature encoder loaded"]["load_ms"] >= 0
    assert progress["feature index built"]["features"] == len(load_concept_data().concepts)
    # not ready while building (the tiny model's concept vectors take seconds), then ready;
    # the stages seen in their order
    assert seen[0] == {"ready": False, "stage": seen[0]["stage"]}
    assert seen[-1] == {"ready": True, "stage": "ready"}
    stages = [s["stage"] for s in seen]
    assert stages == sorted(stages, key=STAGES.index)


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
