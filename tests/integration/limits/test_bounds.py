"""The operator's bounds on one request and on what a tenant keeps, on a live server (the tiny
model): prompt tokens, max_tokens, n, stop strings (count and length), edits per variant,
states and files per tenant, and the generation timeout. Each is a 400 (503 for the timeout)
in OpenAI's error shape that names the field, and a request within the bounds still works."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from helpers.http import TEXT, create_state, new_namespace, nudge_variant
from helpers.server import TINY_NAME, LiveServer, live, running, tiny_settings
from helpers.waiting import wait_until

MAX_PROMPT = 40
MAX_GENERATED = 8
MAX_CHOICES = 2
MAX_STOPS = 2
MAX_STOP_CHARS = 8
MAX_EDITS = 2
MAX_STATES = 3
MAX_FILES = 1
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    settings = tiny_settings(tiny_model_dir, tmp_path_factory.mktemp("cache")).model_copy(
        update={
            "max_prompt_tokens": MAX_PROMPT,
            "max_generated_tokens": MAX_GENERATED,
            "max_choices": MAX_CHOICES,
            "max_stop_strings": MAX_STOPS,
            "max_stop_chars": MAX_STOP_CHARS,
            "max_variant_edits": MAX_EDITS,
            "max_states_per_tenant": MAX_STATES,
            "max_files_per_tenant": MAX_FILES,
        }
    )
    with running(settings) as live_server:
        yield live_server


@pytest.fixture
def http(server: LiveServer):
    # 300 s: the first feature search builds the tiny model's dictionary, on a busy machine
    with httpx.Client(base_url=server.base_url, timeout=300) as client:
        yield client


def refused(r: httpx.Response, param: str, status: int = 400) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"
    return error


def chat(http: httpx.Client, **fields) -> httpx.Response:
    return http.post("/v1/chat/completions", json={"model": TINY_NAME, "messages": HI, **fields})


def test_prompt_tokens_beyond_the_bound_are_refused_on_every_surface(http: httpx.Client):
    long_text = "word " * 100
    r = chat(http, messages=[{"role": "user", "content": long_text}], max_tokens=2)
    error = refused(r, "messages")
    assert error["code"] == "context_length_exceeded"
    assert f"at most {MAX_PROMPT} tokens" in error["message"]
    r = http.post("/v1/completions", json={"model": TINY_NAME, "prompt": long_text})
    refused(r, "prompt")
    refused(http.post("/states", json={"text": long_text}), "text")
    assert chat(http, max_tokens=2).status_code == 200


def test_max_tokens_beyond_the_bound_is_refused_and_its_default_is_the_bound(
    http: httpx.Client,
):
    error = refused(chat(http, max_tokens=MAX_GENERATED + 1), "max_tokens")
    assert f"at most {MAX_GENERATED} tokens" in error["message"]
    r = chat(http, ignore_eos=True)  # no max_tokens: the bound, not the rest of the context
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == MAX_GENERATED


def test_n_beyond_the_bound_is_refused(http: httpx.Client):
    error = refused(chat(http, n=MAX_CHOICES + 1, max_tokens=2), "n")
    assert f"1 to {MAX_CHOICES}" in error["message"]
    r = http.post("/v1/completions", json={"model": TINY_NAME, "prompt": "a", "n": 3})
    refused(r, "n")
    r = chat(http, n=MAX_CHOICES, max_tokens=2)
    assert r.status_code == 200 and len(r.json()["choices"]) == MAX_CHOICES


def test_stop_strings_are_bounded_in_count_and_length(http: httpx.Client):
    error = refused(chat(http, stop=["a", "b", "c"], max_tokens=2), "stop")
    assert f"at most {MAX_STOPS}" in error["message"]
    error = refused(chat(http, stop="x" * (MAX_STOP_CHARS + 1), max_tokens=2), "stop")
    assert f"at most {MAX_STOP_CHARS}" in error["message"]
    state = create_state(http, "the fox")
    body = {"state_id": state["id"], "stop_sequences": ["a", "b", "c"]}
    refused(http.post("/generate/token", json=body), "stop_sequences")
    http.delete(f"/states/{state['id']}")
    assert chat(http, stop=["a", "x" * MAX_STOP_CHARS], max_tokens=2).status_code == 200


def test_edits_per_variant_are_bounded_inline_and_stored(http: httpx.Client):
    namespace = new_namespace()
    r = http.post("/features/search", json={"query": "pirate", "session_id": namespace})
    assert r.status_code == 200, r.text
    found = r.json()[: MAX_EDITS + 1]
    assert len(found) == MAX_EDITS + 1
    edits = [nudge_variant(f, 0.1)["edits"][0] for f in found]
    variant = {"base_model": TINY_NAME, "edits": edits, "scopes": []}
    error = refused(chat(http, variant=variant, max_tokens=2), "variant.edits")
    assert f"at most {MAX_EDITS}" in error["message"]
    r = http.post(
        "/variants", json={"session_id": namespace, "variant_id": "v", "variant": variant}
    )
    refused(r, "variant.edits")

    for feature in found[:MAX_EDITS]:
        body = {"session_id": namespace, "feature_id": feature["uuid"], "value": 0.1}
        assert http.post("/features/steer", json=body).status_code == 200
    body = {"session_id": namespace, "feature_id": found[MAX_EDITS]["uuid"], "value": 0.1}
    refused(http.post("/features/steer", json=body), "feature")
    modified = http.get("/features/modified", params={"session_id": namespace}).json()
    assert len(modified["edits"]) == MAX_EDITS  # the refused edit was not stored
    within = {**variant, "edits": edits[:MAX_EDITS]}
    assert chat(http, variant=within, max_tokens=2).status_code == 200


def delete_every_state(http: httpx.Client) -> None:
    for state in http.get("/states").json()["data"]:
        http.delete(f"/states/{state['id']}")


def test_states_per_tenant_are_bounded_and_deleting_makes_room(http: httpx.Client):
    delete_every_state(http)
    try:
        made = [create_state(http, TEXT) for _ in range(MAX_STATES)]
        error = refused(http.post("/states", json={"text": "one more"}), None)
        assert error["code"] == "limit_reached" and f"{MAX_STATES} states" in error["message"]
        refused(http.post(f"/states/{made[0]['id']}/fork", json={}), None)
        body = {"state_id": made[0]["id"], "max_tokens": 2, "commit": True}
        assert refused(http.post("/generate/token", json=body), None)["code"] == "limit_reached"
        merge = {"state_ids": [made[0]["id"], made[1]["id"]]}
        refused(http.post("/states/merge", json=merge), None)
        assert len(http.get("/states").json()["data"]) == MAX_STATES
        assert http.delete(f"/states/{made[0]['id']}").status_code in (200, 204)
        create_state(http, "room again")
    finally:  # the other tests of this server make states of their own
        delete_every_state(http)


def test_files_per_tenant_are_bounded(http: httpx.Client):
    upload = {"files": {"file": ("a.txt", b"some text")}, "data": {"purpose": "assistants"}}
    first = http.post("/v1/files", **upload)
    assert first.status_code == 200, first.text
    error = refused(http.post("/v1/files", **upload), "file")
    assert error["code"] == "limit_reached"
    assert http.delete(f"/v1/files/{first.json()['id']}").status_code == 200
    assert http.post("/v1/files", **upload).status_code == 200


def test_a_generation_past_the_timeout_is_aborted_with_a_503(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
):
    settings = tiny_settings(tiny_model_dir, tmp_path_factory.mktemp("cache")).model_copy(
        update={"generation_timeout_seconds": 0.5}
    )
    # 20 ms a step: 200 tokens take 4 s, far past the limit.
    with running_slow(settings) as server, httpx.Client(base_url=server.base_url) as http:
        body = {"model": TINY_NAME, "messages": HI, "max_tokens": 200, "ignore_eos": True}
        r = http.post("/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["code"] == "generation_timeout" and "0.5 s" in error["message"]
        assert wait_until(lambda: server.engine.stats()["running"] == 0, 5)

        with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
            assert s.status_code == 200
            events = [line.removeprefix("data: ") for line in s.iter_lines() if line]
        assert json.loads(events[-1])["error"]["code"] == "generation_timeout", events[-1]
        assert len(events) > 2  # tokens came before the limit cut the stream
        stats = server.wait_idle()
        assert stats["running"] == 0 and stats["kv_blocks_used"] == 0, stats

        quick = {**body, "max_tokens": 3}
        assert http.post("/v1/chat/completions", json=quick, timeout=30).status_code == 200


def running_slow(settings):
    return contextmanager(live)(settings, step_delay=0.02)
