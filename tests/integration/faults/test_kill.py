"""`glassbox serve` killed with SIGKILL mid-stream and mid-job, then started again on the same
database and cache directory: everything committed before the kill is there as it was
(variants, states and an exported state, a chat session's messages in order, a finished
job's chunks, a vector store and its file), the interrupted job resumes and stores each of
its chunks once, the interrupted turn and generation left nothing half done, a state
acknowledged just before the kill is there, and the new server serves all of it."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.processes import start_server
from helpers.server import TINY_NAME

from glassbox.store.vector_stores import ChunkRow

JOBS = "/api/v1/embeddings/jobs"
SMALL = {"max_tokens": 32, "overlap_tokens": 8}
WORDS = (
    "a server killed in the middle of a stream or a job must come back with every state , "
    "session , variant and chunk it had committed , and nothing half written ; the job "
    "resumes where its last batch was stored"
).split()
TEXT = "the quick brown fox jumps over the lazy dog and then the dog runs after the fox"
# Volatile fields: where a state's KV is now, and its file's size (the KV in the pool at the
# kill is recomputed from the tokens after it).
WHERE = {"location", "file_bytes"}


def documents(n: int, seed: int, words: int = 60) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)]
    return [{"id": f"doc-{i}", "text": t, "attributes": {"n": i}} for i, t in enumerate(texts)]


def ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, (r.request.method, r.request.url, r.text)
    return r.json()


def wait(condition, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def job_done(http: httpx.Client, job_id: str) -> dict | None:
    job = ok(http.get(f"{JOBS}/{job_id}"))
    assert job["status"] in ("queued", "running", "completed"), job
    return job if job["status"] == "completed" else None


def chunks(server_dir: Path, collection_id: str) -> list[tuple]:
    """The collection's chunk rows as stored, in key order (read-only, beside the server)."""
    db = sqlite3.connect(f"file:{server_dir / 'glassbox.db'}?mode=ro", uri=True)
    try:
        return db.execute(
            f"SELECT document_id, position, text, start_char, end_char, embedding, attributes, "
            f"writes FROM {ChunkRow.__tablename__} WHERE collection_id = ? "
            "ORDER BY document_id, position",
            (collection_id,),
        ).fetchall()
    finally:
        db.close()


def state_of(http: httpx.Client, state_id: str) -> dict:
    return {k: v for k, v in ok(http.get(f"/states/{state_id}")).items() if k not in WHERE}


def greedy(http: httpx.Client, state_id: str) -> str:
    body = {"state_id": state_id, "max_tokens": 8, "temperature": 0.0}
    return ok(http.post("/generate/token", json=body))["text"]


def events(response: httpx.Response, n: int) -> list[dict]:
    """The first `n` SSE events of a streaming response."""
    got: list[dict] = []
    lines = response.iter_lines()
    while len(got) < n:
        line = next(lines)
        if line.startswith("data:"):
            got.append(json.loads(line.removeprefix("data:").strip()))
    return got


def commit_everything(http: httpx.Client, server_dir: Path) -> dict[str, Any]:
    """Store one of each kind of object through the API; what each looks like, to compare."""
    seen: dict[str, Any] = {}
    # Stored variants: one given whole and a copy of it. (No feature edit: building the
    # feature dictionaries would double the test's time; the JSON is stored the same way.)
    variant = {"base_model": TINY_NAME, "edits": [], "scopes": []}
    ok(http.post("/variants", json={"session_id": "ns-kill", "variant_id": "given",
                                    "variant": variant}), 201)  # fmt: skip
    ok(http.post("/variants", json={"session_id": "ns-kill", "variant_id": "copy",
                                    "base_variant_id": "given"}), 201)  # fmt: skip
    seen["variants"] = ok(http.get("/variants", params={"session_id": "ns-kill"}))

    # States: a root, a fork, a generation committed as a child, a checkpoint, an export.
    root = ok(http.post("/states", json={"text": TEXT, "config": {"seed": 7}}), 201)["id"]
    fork = ok(http.post(f"/states/{root}/fork", json={"token_index": 6}), 201)["id"]
    body = {"state_id": root, "max_tokens": 12, "commit": True, "temperature": 1.0, "seed": 3}
    child = ok(http.post("/generate/token", json=body))["child_state_id"]
    ok(http.post(f"/states/{child}/checkpoints", json={"name": "mark", "token_index": 10}))
    exported = ok(http.post(f"/states/{child}/export", json={"name": "kept"}))
    export_file = server_dir / "states" / "exports" / "local" / "kept.gbstate"
    seen["export"] = (exported, hashlib.sha256(export_file.read_bytes()).hexdigest())
    seen["states"] = {i: state_of(http, i) for i in (root, fork, child)}
    seen["greedy"] = greedy(http, root)

    # A chat session of three turns.
    start = {"user_id": "u-kill", "initial_message": "hello there", "temperature": 0.0,
             "max_tokens": 8}  # fmt: skip
    session = ok(http.post("/llm/chat/", json=start))["session_id"]
    for text in ("second message", "third message"):
        ok(http.post(f"/llm/chat/{session}/message/", json={"user_message": text}))
    seen["session"] = session
    seen["history"] = ok(http.get(f"/llm/chat/{session}/history/"))
    assert [m["sender"] for m in seen["history"]] == ["user", "assistant"] * 3
    listed = ok(http.get("/llm/chat/sessions/", params={"user_id": "u-kill"}))["data"]
    seen["session_state"] = state_of(http, listed[0]["state_id"])

    # A finished embedding job, and a vector store with one file.
    docs = documents(3, seed=1)
    body = {"user_id": "u-kill", "documents": docs, "collection_id": "finished",
            "chunking": SMALL}  # fmt: skip
    job = ok(http.post(JOBS, json=body), 202)
    seen["job"] = wait(lambda: job_done(http, job["job_id"]), "the first job")
    seen["job_chunks"] = chunks(server_dir, "finished")
    assert len(seen["job_chunks"]) == seen["job"]["stages"]["storage"]["total"] > 0
    assert {row[-1] for row in seen["job_chunks"]} == {1}  # each chunk written once
    upload = {"file": ("notes.txt", " ".join(d["text"] for d in documents(3, seed=2)).encode())}
    file_id = ok(http.post("/v1/files", files=upload, data={"purpose": "assistants"}))["id"]
    store = ok(http.post("/v1/vector_stores", json={"name": "kept", "file_ids": [file_id]}))
    files_url = f"/v1/vector_stores/{store['id']}/files/{file_id}"
    wait(lambda: ok(http.get(files_url))["status"] == "completed", "the vector store's file")
    seen["store_file"] = ok(http.get(files_url))
    content = http.get(f"/v1/files/{file_id}/content").content
    seen["file"] = (ok(http.get(f"/v1/files/{file_id}")), content)
    seen["store_chunks"] = chunks(server_dir, store["id"])
    query = {"query": "a job resumes where its last batch was stored", "max_num_results": 3}
    seen["search"] = ok(http.post(f"/v1/vector_stores/{store['id']}/search", json=query))
    seen["store"] = ok(http.get(f"/v1/vector_stores/{store['id']}"))  # searched: active
    seen["ids"] = {"root": root, "fork": fork, "child": child, "file": file_id,
                   "store": store["id"], "query": query}  # fmt: skip
    return seen


def assert_all_there(http: httpx.Client, server_dir: Path, seen: dict[str, Any]) -> None:
    ids = seen["ids"]
    assert ok(http.get("/variants", params={"session_id": "ns-kill"})) == seen["variants"]
    for state_id, state in seen["states"].items():
        assert state_of(http, state_id) == state
    assert greedy(http, ids["root"]) == seen["greedy"]
    exported, digest = seen["export"]
    export_file = server_dir / "states" / "exports" / "local" / "kept.gbstate"
    assert hashlib.sha256(export_file.read_bytes()).hexdigest() == digest
    assert ok(http.get("/states/exports"))["data"] == [{"name": "kept", "bytes": exported["bytes"]}]
    imported = ok(http.post("/states/import", json={"name": "kept"}), 201)
    assert imported["token_ids"] == seen["states"][ids["child"]]["token_ids"]

    assert ok(http.get(f"/llm/chat/{seen['session']}/history/")) == seen["history"]
    state = seen["session_state"]
    assert state_of(http, state["id"]) == state

    assert ok(http.get(f"{JOBS}/{seen['job']['job_id']}")) == seen["job"]
    assert chunks(server_dir, "finished") == seen["job_chunks"]
    store_url = f"/v1/vector_stores/{ids['store']}"
    assert ok(http.get(store_url)) == seen["store"]
    assert ok(http.get(f"{store_url}/files/{ids['file']}")) == seen["store_file"]
    info, content = seen["file"]
    assert ok(http.get(f"/v1/files/{ids['file']}")) == info
    assert http.get(f"/v1/files/{ids['file']}/content").content == content
    assert chunks(server_dir, ids["store"]) == seen["store_chunks"]
    assert ok(http.post(f"{store_url}/search", json=ids["query"])) == seen["search"]


@pytest.mark.slow
def test_kill_9_mid_stream_and_mid_job_loses_nothing_committed(tiny_model_dir, tmp_path):
    server_dir = tmp_path / "srv"
    # Batches of 8 chunks: the job's progress is committed often, so the kill lands mid-job.
    env = {"GLASSBOX_EMBEDDING_JOBS_BATCH_SIZE": "8"}
    server = start_server(server_dir, tiny_model_dir, **env)
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as http:
            seen = commit_everything(http, server_dir)
            # A session whose turns are long, for the turn cut short by the kill.
            start = {"user_id": "u-stream", "initial_message": "tell me a long story",
                     "temperature": 1.0, "seed": 5, "max_tokens": 120}  # fmt: skip
            streamed = ok(http.post("/llm/chat/", json=start))["session_id"]
            streamed_history = ok(http.get(f"/llm/chat/{streamed}/history/"))
            before_ids = {s["id"] for s in ok(http.get("/states", params={"limit": 100}))["data"]}

            docs = documents(30, seed=3)
            job = ok(http.post(JOBS, json={"user_id": "u-kill", "documents": docs,
                                           "collection_id": "killed", "chunking": SMALL}),
                     202)  # fmt: skip
            total = job["stages"]["storage"]["total"]

            def started() -> bool:
                progress = ok(http.get(f"{JOBS}/{job['job_id']}"))["stages"]["storage"]["done"]
                assert progress < total, "the job ended before the kill: give it more documents"
                return progress >= 8

            wait(started, "the job's first batch")
            turn = {"user_message": "and then what happened", "stream": True}
            gen = {"state_id": seen["ids"]["root"], "max_tokens": 400, "stream": True,
                   "commit": True, "temperature": 1.0, "seed": 9}  # fmt: skip
            with (
                http.stream("POST", f"/llm/chat/{streamed}/message/", json=turn) as chat,
                http.stream("POST", "/generate/token", json=gen) as generation,
            ):
                assert chat.status_code == 200 and generation.status_code == 200
                said = events(chat, 3)
                generated = events(generation, 3)
                at_kill = ok(http.get(f"{JOBS}/{job['job_id']}"))
                # The last answer before the kill: a state acknowledged is a state recorded.
                last = ok(http.post(f"/states/{seen['ids']['root']}/fork",
                                    json={"token_index": 4}), 201)  # fmt: skip
                os.killpg(server.proc.pid, signal.SIGKILL)
                server.proc.wait(timeout=10)
    finally:
        server.stop()
    assert all("delta" in e for e in said) and all("token_id" in e for e in generated)
    assert at_kill["status"] == "running" and 8 <= at_kill["stages"]["storage"]["done"] < total

    again = start_server(server_dir, tiny_model_dir, **env)
    try:
        again.wait_ready()
        with httpx.Client(base_url=again.url, timeout=60) as http:
            health = ok(http.get("/health"))
            assert health["status"] == "ok" and health["components"]["database"]["ok"]
            assert_all_there(http, server_dir, seen)
            assert state_of(http, last["id"]) == {k: v for k, v in last.items() if k not in WHERE}

            # The interrupted job resumes and completes, each chunk stored once.
            done = wait(lambda: job_done(http, job["job_id"]), "the interrupted job", 120)
            assert done["stages"]["storage"] == {"done": total, "total": total}
            rows = chunks(server_dir, "killed")
            keys = [(r[0], r[1]) for r in rows]
            assert len(keys) == len(set(keys)) == total
            by_id = {d["id"]: d["text"] for d in docs}
            assert {r[0] for r in rows} == set(by_id)
            for document_id, position, text, start, end, *_ in rows:
                assert text == by_id[document_id][start:end]
                assert (document_id, position - 1) in keys or position == 0

            # The turn cut short is not in the history (or is there whole, had it ended);
            # the session takes its next turn.
            history = ok(http.get(f"/llm/chat/{streamed}/history/"))
            assert history[: len(streamed_history)] == streamed_history
            assert len(history) in (len(streamed_history), len(streamed_history) + 2)
            reply = ok(http.post(f"/llm/chat/{streamed}/message/",
                                 json={"user_message": "the end"}))  # fmt: skip
            after = ok(http.get(f"/llm/chat/{streamed}/history/"))
            assert after[: len(history)] == history
            assert [(m["sender"], m["content"]) for m in after[len(history) :]] == [
                ("user", "the end"), ("assistant", reply["response_message"])]  # fmt: skip

            # No state was half made by the generation cut short: every state is whole and
            # generates; a child of the root, had it been committed, extends the root.
            listed = ok(http.get("/states", params={"limit": 100}))["data"]
            root = seen["states"][seen["ids"]["root"]]
            for summary in listed:
                state = ok(http.get(f"/states/{summary['id']}"))
                assert len(state["token_ids"]) == state["num_tokens"]
                made = summary["id"] not in before_ids | {last["id"]}
                if made and state["parent_id"] == root["id"]:
                    assert state["token_ids"][: root["num_tokens"]] == root["token_ids"]
                greedy(http, summary["id"])
    finally:
        again.stop()
    assert again.proc.returncode == 0
