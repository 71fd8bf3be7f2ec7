"""One live server of the tiny model for the hostile-input tests, its cache a few folders down
a root of its own (so a name that climbs out of the cache lands in the root, where the tests
look for it), and one stored object of every kind whose id a route takes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers.hostile import Hostile
from helpers.server import running, tiny_settings
from helpers.waiting import wait_until


def _ok(r: httpx.Response, status: int = 200) -> dict:
    assert r.status_code == status, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    return r.json()


def _objects(http: httpx.Client) -> dict[str, str]:
    ids = {"ns": "ns-hostile", "variant": "var-hostile", "export": "export-hostile"}
    _ok(http.post("/variants", json={"session_id": ids["ns"], "variant_id": ids["variant"],
                                     "base_variant_id": "default"}), 201)  # fmt: skip
    ids["state"] = _ok(http.post("/states", json={"text": "a state of hostile tests"}), 201)["id"]
    ids["other"] = _ok(http.post(f"/states/{ids['state']}/fork"), 201)["id"]
    _ok(http.post(f"/states/{ids['state']}/export", json={"name": ids["export"]}))
    chat = _ok(http.post("/llm/chat/", json={"user_id": "user-hostile", "initial_message": "hi",
                                             "temperature": 0, "max_tokens": 1}))  # fmt: skip
    ids["session"] = chat["session_id"]
    job = _ok(http.post("/api/v1/embeddings/jobs", json={"user_id": "user-hostile",
              "content": "some text to embed", "collection_id": "col-hostile"}), 202)  # fmt: skip
    ids["job"] = job["job_id"]
    r = http.post("/v1/files", files={"file": ("notes.txt", b"plain notes")},
                  data={"purpose": "assistants"})  # fmt: skip
    ids["file"] = _ok(r)["id"]
    store = http.post("/v1/vector_stores", json={"name": "s", "file_ids": [ids["file"]]})
    ids["store"] = _ok(store)["id"]
    ids["key"] = _ok(http.post("/admin/keys", json={"scopes": ["read"]}))["id"]

    def settled() -> bool:
        job = http.get(f"/api/v1/embeddings/jobs/{ids['job']}").json()["status"]
        job_done = job in ("completed", "failed", "cancelled")
        store = http.get(f"/v1/vector_stores/{ids['store']}").json()
        return job_done and store["file_counts"]["in_progress"] == 0

    assert wait_until(settled, timeout=60), "the job or the vector store did not settle"
    return ids


@pytest.fixture(scope="package")
def hostile(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    root = tmp_path_factory.mktemp("hostile-root")
    cache = root / "srv" / "data" / "cache"
    with running(tiny_settings(tiny_model_dir, cache)) as server:
        baseline = server.wait_idle()["kv_blocks_used"]
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            yield Hostile(server, http, root, cache, _objects(http), baseline)
