"""The server's log at INFO on a live server with API keys: JSON lines that never carry a
key, a prompt, a message, an embedding input or a file's contents, and one access line per
request with its id, tenant, method, route, status and duration."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
from helpers.server import TINY_NAME, running, tiny_settings
from helpers.waiting import wait_until

from glassbox.logs import configure_logging

SECRET = "purple-elephant-" + "7431"  # a phrase no log line may quote
TENANT = "log-tenant"
ACCESS_FIELDS = {"request_id", "tenant", "method", "route", "status", "duration_ms"}


def exercise(http: httpx.Client) -> list[str]:
    """A chat (whole and streamed), a session of two turns, an embedding, a file uploaded
    and ingested into a vector store and searched, all with the secret: the request ids."""
    ids = []

    def call(method: str, url: str, **kwargs) -> httpx.Response:
        r = http.request(method, url, **kwargs)
        assert r.status_code < 300, (url, r.text)
        ids.append(r.headers["x-request-id"])
        return r

    user = [{"role": "user", "content": f"Remember {SECRET}, please."}]
    call("POST", "/v1/chat/completions", json={"model": TINY_NAME, "messages": user,
                                               "max_tokens": 3})  # fmt: skip
    call("POST", "/v1/chat/completions", json={"model": TINY_NAME, "messages": user,
                                               "max_tokens": 3, "stream": True})  # fmt: skip
    started = call(
        "POST",
        "/llm/chat/",
        json={"user_id": "u", "max_tokens": 3, "initial_message": f"My code is {SECRET}"},
    )
    session = started.json()["session_id"]
    call("POST", f"/llm/chat/{session}/message/", json={"user_message": f"Again: {SECRET}"})
    call("POST", "/v1/embeddings", json={"input": [f"embed {SECRET}"]})
    text = (f"A file that mentions {SECRET} in its text. " * 20).encode()
    uploaded = call("POST", "/v1/files", files={"file": ("notes.txt", text)},
                    data={"purpose": "assistants"})  # fmt: skip
    store = call(
        "POST", "/v1/vector_stores", json={"name": "notes", "file_ids": [uploaded.json()["id"]]}
    )
    store_url = f"/v1/vector_stores/{store.json()['id']}"
    assert wait_until(lambda: http.get(store_url).json()["status"] == "completed", 60)
    call("POST", f"{store_url}/search", json={"query": SECRET})
    return ids


def test_info_logs_carry_no_secrets_and_every_access_line_its_fields(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    settings = tiny_settings(tiny_model_dir, tmp_path).model_copy(update={"api_keys": "required"})
    buf = io.StringIO()
    with running(settings) as server:
        key = server.app.state.keys.create(TENANT).key
        headers = {"Authorization": f"Bearer {key}"}
        configure_logging("INFO", stream=buf)
        try:
            with httpx.Client(base_url=server.base_url, timeout=120, headers=headers) as http:
                ids = exercise(http)
                bad = {"Authorization": f"Bearer {key}x"}  # a wrong key is not logged either
                assert http.get("/v1/models", headers=bad).status_code == 401
            # an access line is written just after its response has gone out
            assert wait_until(lambda: all(i in buf.getvalue() for i in ids), 5)
        finally:
            configure_logging("WARNING")
    text = buf.getvalue()
    records = [json.loads(line) for line in text.splitlines() if line.strip()]  # JSON, each
    assert records
    assert SECRET not in text and key not in text
    assert key.split("-", 1)[-1][:16] not in text  # nor a part of it
    access = [r for r in records if r.get("logger") == "glassbox.access"]
    assert {r["request_id"] for r in access} >= set(ids)
    for r in access:
        assert ACCESS_FIELDS <= set(r), r
        assert isinstance(r["duration_ms"], float | int) and r["duration_ms"] >= 0
        assert r["status"] == 401 or r["tenant"] == TENANT, r
    mine = [r for r in access if r["request_id"] in ids]
    assert {r["route"] for r in mine} >= {"/v1/chat/completions", "/llm/chat/",
                                          "/llm/chat/{session_id}/message/", "/v1/embeddings",
                                          "/v1/files"}  # fmt: skip
    assert all(r["status"] < 300 and r["method"] == "POST" for r in mine)
