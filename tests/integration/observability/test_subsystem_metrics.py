"""/metrics on a live server with API keys: each subsystem's families (states, features,
sessions, embedding jobs, engine, rate limits, auth failures) with the values that follow
from exercising it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers.http import nudge_variant
from helpers.server import TINY_NAME, LiveServer, running, tiny_settings
from helpers.waiting import wait_until
from prometheus_client.parser import text_string_to_metric_families

FAMILIES = {
    "glassbox_states": "gauge",
    "glassbox_state_file_bytes": "gauge",
    "glassbox_state_resident_bytes": "gauge",
    "glassbox_state_budget_bytes": "gauge",
    "glassbox_state_operations": "counter",
    "glassbox_features_ready": "gauge",
    "glassbox_feature_dictionaries": "gauge",
    "glassbox_feature_dictionary_features": "gauge",
    "glassbox_feature_calls": "counter",
    "glassbox_steered_requests": "counter",
    "glassbox_sessions": "gauge",
    "glassbox_sessions_active": "gauge",
    "glassbox_session_turns_running": "gauge",
    "glassbox_session_turns": "counter",
    "glassbox_session_prompt_tokens": "counter",
    "glassbox_session_rebuilds": "counter",
    "glassbox_embedding_jobs": "gauge",
    "glassbox_embedding_jobs_running": "gauge",
    "glassbox_embedding_job_dead_letters": "gauge",
    "glassbox_embedding_job_stage_items": "counter",
    "glassbox_embedding_job_queue_depth": "gauge",
    "glassbox_rate_limited": "counter",
    "glassbox_auth_failures": "counter",
    "glassbox_num_requests_running": "gauge",
}


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = tiny_settings(tiny_model_dir, tmp_path_factory.mktemp("cache"))
    settings = settings.model_copy(update={"api_keys": "required", "open_metrics": True})
    with running(settings) as live:
        yield live


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    key = server.app.state.keys.create("observed").key
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=server.base_url, timeout=120, headers=headers) as c:
        yield c


def scrape(http: httpx.Client) -> tuple[dict[str, str], dict[tuple, float]]:
    """The families' types by name, and every sample by (name, sorted labels)."""
    r = http.get("/metrics")
    assert r.status_code == 200
    types, samples = {}, {}
    for family in text_string_to_metric_families(r.text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return types, samples


def value(samples: dict, name: str, **labels: str) -> float:
    """A sample's value (0 for a labelled child that was never incremented)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_every_family_is_there_from_the_start(http) -> None:
    types, samples = scrape(http)
    for name, kind in FAMILIES.items():
        assert types.get(name) == kind, name
    assert value(samples, "glassbox_embedding_job_dead_letters") == 0  # in-process jobs
    for status in ("queued", "running", "completed", "failed", "cancelled"):
        assert ("glassbox_embedding_jobs", (("status", status),)) in samples


def test_auth_failures_are_counted(http, server) -> None:
    before = value(scrape(http)[1], "glassbox_auth_failures_total", reason="invalid")
    with httpx.Client(base_url=server.base_url) as anonymous:
        bad = {"Authorization": "Bearer gbx-" + "x" * 43}
        assert anonymous.get("/v1/models", headers=bad).status_code == 401
    after = value(scrape(http)[1], "glassbox_auth_failures_total", reason="invalid")
    assert after == before + 1


def test_states_by_residency_bytes_and_operations(http, server) -> None:
    states = server.app.state.states
    first = http.post("/states", json={"text": "The first state reads this sentence. " * 4})
    assert first.status_code == 201, first.text
    # room for the first state's blocks only: the next one spills it to its file
    states.residency.budget_bytes = states.residency.bytes
    second = http.post("/states", json={"text": "A second, other sentence to read. " * 4})
    fork = http.post(f"/states/{second.json()['id']}/fork", json={})
    assert second.status_code == 201 and fork.status_code == 201, fork.text
    exported = http.get(f"/states/{second.json()['id']}/export")
    assert exported.status_code == 200
    imported = http.post("/states/import", content=exported.content,
                         headers={"content-type": "application/octet-stream"})  # fmt: skip
    assert imported.status_code == 201, imported.text
    _, s = scrape(http)
    memory = value(s, "glassbox_states", location="memory")
    disk = value(s, "glassbox_states", location="disk")
    assert memory >= 1 and disk >= 1 and memory + disk == 4  # two made, a fork, an import
    assert value(s, "glassbox_states", location="tokens") == 0
    assert value(s, "glassbox_state_file_bytes") >= len(exported.content) // 2
    assert value(s, "glassbox_state_resident_bytes") == states.residency.bytes > 0
    assert value(s, "glassbox_state_budget_bytes") == states.residency.budget_bytes
    for op in ("fork", "export", "import"):
        assert value(s, "glassbox_state_operations_total", operation=op) == 1, op


def test_sessions_turns_reuse_and_rebuilds(http) -> None:
    started = http.post("/llm/chat/", json={"user_id": "u", "initial_message": "Hello there",
                                            "max_tokens": 4})  # fmt: skip
    assert started.status_code == 200, started.text
    session_id = started.json()["session_id"]
    second = http.post(f"/llm/chat/{session_id}/message/", json={"user_message": "And then?"})
    assert second.status_code == 200, second.text
    assert wait_until(lambda: value(scrape(http)[1], "glassbox_sessions") == 1, 5)  # read anew
    _, s = scrape(http)  # every 2 s
    assert value(s, "glassbox_sessions_active") == 1
    assert value(s, "glassbox_session_turns_total", backend="local") == 2
    assert value(s, "glassbox_session_turns_total", backend="backend") == 0
    assert value(s, "glassbox_session_turns_running") == 0
    prompts = started.json()["usage"]["prompt_tokens"] + second.json()["usage"]["prompt_tokens"]
    reused = value(s, "glassbox_session_prompt_tokens_total", kv="reused")
    computed = value(s, "glassbox_session_prompt_tokens_total", kv="computed")
    assert reused >= second.json()["usage"]["cached_tokens"] > 0  # the first turn's KV
    assert reused + computed == prompts
    assert value(s, "glassbox_session_rebuilds_total") == 0

    # its state deleted, the next turn recomputes the conversation from the messages
    state_id = second.json()["session"]["state_id"]
    assert http.delete(f"/states/{state_id}").status_code in (200, 204)
    third = http.post(f"/llm/chat/{session_id}/message/", json={"user_message": "Go on"})
    assert third.status_code == 200, third.text
    assert value(scrape(http)[1], "glassbox_session_rebuilds_total") == 1
    assert http.delete(f"/llm/chat/{session_id}/").status_code in (200, 204)
    assert wait_until(lambda: value(scrape(http)[1], "glassbox_sessions") == 0, 5)


def test_feature_dictionaries_calls_and_steered_requests(tiny_server: LiveServer) -> None:
    """On the session's server: its features are built once for every test that needs them."""
    messages = [{"role": "user", "content": "Tell me about your day."}]
    calls = "glassbox_feature_calls_total"
    with httpx.Client(base_url=tiny_server.base_url, timeout=120) as http:
        _, before = scrape(http)
        hits = http.post("/features/search", json={"query": "pirate", "session_id": "obs"})
        assert hits.status_code == 200, hits.text
        body = {"messages": messages, "session_id": "obs"}
        assert http.post("/features/inspect", json=body).status_code == 200
        _, between = scrape(http)
        body = {"model": TINY_NAME, "messages": messages, "max_tokens": 2,
                "variant": nudge_variant(hits.json()[0], 0.2)}  # fmt: skip
        assert http.post("/v1/chat/completions", json=body).status_code == 200
        _, s = scrape(http)
    assert value(s, "glassbox_features_ready") == 1
    assert value(s, "glassbox_feature_dictionaries") >= 1
    assert value(s, "glassbox_feature_dictionary_features", dictionary="concepts") > 0
    assert value(s, calls, kind="search") == value(before, calls, kind="search") + 1
    assert value(s, calls, kind="inspect") == value(before, calls, kind="inspect") + 1
    assert value(s, calls, kind="contrast") == value(before, calls, kind="contrast")
    steered = "glassbox_steered_requests_total"
    assert value(s, steered) == value(between, steered) + 1


def test_embedding_jobs_by_status_and_stage(http) -> None:
    job = http.post("/api/v1/embeddings/jobs",
                    json={"user_id": "obs", "documents": [{"text": "word " * 300}]})  # fmt: skip
    assert job.status_code == 202, job.text
    url = f"/api/v1/embeddings/jobs/{job.json()['job_id']}"
    assert wait_until(lambda: http.get(url).json()["status"] == "completed", 60)
    chunks = http.get(url).json()["stages"]["storage"]["total"]

    def completed() -> bool:  # the job stats are read again every few seconds
        return value(scrape(http)[1], "glassbox_embedding_jobs", status="completed") == 1

    assert wait_until(completed, 15)
    _, s = scrape(http)
    assert value(s, "glassbox_embedding_job_stage_items_total", stage="storage") == chunks > 0
    assert value(s, "glassbox_embedding_jobs", status="failed") == 0
    for stage in ("chunking", "embedding", "storage"):
        assert value(s, "glassbox_embedding_jobs_running", stage=stage) == 0
    assert value(s, "glassbox_embedding_job_dead_letters") == 0
