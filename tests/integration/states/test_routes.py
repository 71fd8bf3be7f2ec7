"""/states and /generate/token against a live tiny server: the tree of states, generation
that reuses a state's KV, spill and reload, restart, export and import."""

from __future__ import annotations

import asyncio
import json
from contextlib import contextmanager

import httpx
import pytest
import zstandard
from helpers.http import TEXT, blocks_used, create_state, pirate_variant
from helpers.server import TINY_NAME, LiveServer, live, running, tiny_settings
from helpers.waiting import async_wait_until


def generate(http: httpx.Client, state_id: str, **kw) -> dict:
    body = {"state_id": state_id, "max_tokens": 8, "temperature": 1.0, "seed": 3, **kw}
    r = http.post("/generate/token", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def all_state_ids(http: httpx.Client) -> list[str]:
    """Every state's id, oldest first: GET /states page after page."""
    ids: list[str] = []
    params: dict = {"limit": 100}
    while True:
        page = http.get("/states", params=params).json()
        ids += [d["id"] for d in page["data"]]
        if not page["has_more"]:
            return ids
        params["after"] = page["last_id"]


def test_create_read_list_delete(tiny_server: LiveServer, http: httpx.Client) -> None:
    s = create_state(http, temperature=0.5, seed=9)
    assert s["object"] == "state" and s["parent_id"] is None and s["location"] == "memory"
    assert s["num_tokens"] == len(s["token_ids"]) > 10 and TEXT in s["text"]
    assert s["config"] == {"temperature": 0.5, "top_p": 1.0, "seed": 9}
    assert s["bytes"] > 0 and s["created"] <= s["modified"]
    got = http.get(f"/states/{s['id']}").json()
    assert got["token_ids"] == s["token_ids"]

    others = [create_state(http, f"state number {i}")["id"] for i in range(3)]
    page = http.get("/states", params={"limit": 2, "after": s["id"]}).json()
    assert [d["id"] for d in page["data"]] == others[:2] and page["has_more"]
    rest = http.get("/states", params={"limit": 2, "after": page["last_id"]}).json()
    assert rest["data"][0]["id"] == others[2]

    assert http.delete(f"/states/{s['id']}").json() == {
        "object": "state.deleted",
        "id": s["id"],
        "deleted": True,
    }
    for method, path in [("GET", f"/states/{s['id']}"), ("DELETE", f"/states/{s['id']}")]:
        r = http.request(method, path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "state_not_found"
    assert http.post("/generate/token", json={"state_id": "nope"}).status_code == 404


def test_create_from_messages_and_bad_input(http: httpx.Client) -> None:
    r = http.post("/states", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 201 and "hi" in r.json()["text"]
    both = {"text": "a", "messages": [{"role": "user", "content": "x"}]}
    bad = [
        ({}, 400),
        ({"text": ""}, 400),
        (both, 400),
        ({"text": "a", "config": {"temperature": -1}}, 400),
        ({"text": "a", "model_id": "x"}, 404),
    ]
    for body, code in bad:
        r = http.post("/states", json=body)
        assert r.status_code == code and "error" in r.json(), (body, r.text)
    r = http.post("/states", json={"text": "word " * 600})
    assert r.status_code == 400 and "context" in r.json()["error"]["message"]


def test_generation_reuses_the_state_and_repeats_with_a_seed(
    tiny_server: LiveServer, http: httpx.Client
) -> None:
    s = create_state(http)
    a = generate(http, s["id"])
    b = generate(http, s["id"])
    assert a["text"] == b["text"] and len(a["tokens"]) == 8
    assert a["usage"] == {
        "prompt_tokens": s["num_tokens"],
        "completion_tokens": 8,
        "cached_tokens": s["num_tokens"] - 1,  # only the last prompt token is computed
    }
    other = generate(http, s["id"], seed=4)
    assert other["text"] != a["text"]
    assert a["child_state_id"] is None


def test_a_state_that_fills_the_context_cannot_be_continued(http: httpx.Client) -> None:
    s = create_state(http, "word " * 150)
    full = generate(http, s["id"], max_tokens=600, commit=True, temperature=0.0)
    assert full["finish_reason"] == "length"
    child = http.get(f"/states/{full['child_state_id']}").json()
    r = http.post("/generate/token", json={"state_id": child["id"]})
    assert r.status_code == 400 and "context" in r.json()["error"]["message"]


def test_state_config_gives_the_sampling_defaults(http: httpx.Client) -> None:
    s = create_state(http, temperature=0.0)
    greedy = [generate(http, s["id"], temperature=None, seed=i)["text"] for i in range(3)]
    assert len(set(greedy)) == 1


def test_commit_makes_a_child_that_continues_the_generation(
    tiny_server: LiveServer, http: httpx.Client
) -> None:
    s = create_state(http)
    whole = generate(http, s["id"], max_tokens=10, temperature=0.0)
    part = generate(http, s["id"], max_tokens=4, temperature=0.0, commit=True)
    child = http.get(f"/states/{part['child_state_id']}").json()
    assert child["parent_id"] == s["id"]
    assert child["token_ids"] == s["token_ids"] + [t["token_id"] for t in part["tokens"]]
    rest = generate(http, child["id"], max_tokens=6, temperature=0.0)
    ids = [t["token_id"] for t in part["tokens"] + rest["tokens"]]
    assert ids == [t["token_id"] for t in whole["tokens"]]
    history = http.get(f"/states/{child['id']}/history").json()
    assert [d["id"] for d in history["data"]] == [child["id"], s["id"]]


def test_streaming_sends_one_event_per_token(http: httpx.Client) -> None:
    s = create_state(http)
    expected = generate(http, s["id"], logprobs=2)
    body = {"state_id": s["id"], "max_tokens": 8, "seed": 3, "stream": True, "logprobs": 2}
    events = []
    with http.stream("POST", "/generate/token", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    tokens = [e for e in events if "token_id" in e]
    assert [e["index"] for e in tokens] == list(range(8))
    assert [e["token_id"] for e in tokens] == [t["token_id"] for t in expected["tokens"]]
    assert all(len(e["top_logprobs"]) == 2 for e in tokens)
    assert "".join(e.get("text", "") for e in events) == expected["text"]
    assert events[-1]["finish_reason"] == "length" and events[-1]["usage"]["completion_tokens"] == 8


def test_fork_shares_blocks_and_rollback_truncates(
    tiny_server: LiveServer, http: httpx.Client
) -> None:
    s = create_state(http, temperature=0.0)
    before = blocks_used(tiny_server)
    fork = http.post(f"/states/{s['id']}/fork").json()
    assert blocks_used(tiny_server) == before  # no block copied, none added
    assert fork["parent_id"] == s["id"] and fork["token_ids"] == s["token_ids"]
    assert generate(http, fork["id"])["text"] == generate(http, s["id"])["text"]

    head = http.post(f"/states/{s['id']}/fork", json={"token_index": 5}).json()
    assert head["token_ids"] == s["token_ids"][:5]

    r = http.post(f"/states/{fork['id']}/checkpoints", json={"name": "start", "token_index": 6})
    assert r.status_code == 200 and r.json()["checkpoints"] == {"start": 6}
    r = http.post(f"/states/{fork['id']}/rollback", json={"checkpoint": "start"})
    assert r.status_code == 200 and r.json()["token_ids"] == s["token_ids"][:6]
    six = http.post(f"/states/{s['id']}/fork", json={"token_index": 6}).json()
    assert generate(http, fork["id"])["text"] == generate(http, six["id"])["text"]
    assert http.get(f"/states/{s['id']}").json()["token_ids"] == s["token_ids"]  # parent intact

    for body, code in [({"token_index": 0}, 400), ({"token_index": 10_000}, 400),
                       ({"checkpoint": "nope"}, 404), ({}, 400)]:  # fmt: skip
        r = http.post(f"/states/{fork['id']}/rollback", json=body)
        assert r.status_code == code, (body, r.text)


def test_diff_and_merge(http: httpx.Client) -> None:
    root = create_state(http, "one two three four five six seven")
    a = generate(http, root["id"], max_tokens=3, commit=True, seed=1)["child_state_id"]
    b = generate(http, root["id"], max_tokens=3, commit=True, seed=2)["child_state_id"]
    d = http.get(f"/states/{a}/diff/{b}").json()
    assert d["common_ancestor_id"] == root["id"]
    n = d["common_prefix_tokens"]
    sa, sb = (http.get(f"/states/{x}").json() for x in (a, b))
    assert sa["token_ids"][:n] == sb["token_ids"][:n] and n >= root["num_tokens"]
    assert d["a"]["token_ids"] == sa["token_ids"][n:] and d["b"]["token_ids"] == sb["token_ids"][n:]

    r = http.post("/states/merge", json={"state_ids": [a, b]})
    assert r.status_code == 201, r.text
    m = r.json()
    assert m["token_ids"] == sa["token_ids"] + sb["token_ids"][n:]
    assert m["parent_id"] == root["id"] and m["metadata"]["merged_from"] == [a, b]
    # The merged state continues like its tokens read cold: the same token ids sent as a
    # completion prompt (re-tokenizing its text need not give back the same ids).
    g1 = generate(http, m["id"], temperature=0.0)
    assert g1["usage"]["cached_tokens"] == m["num_tokens"] - 1  # from the merged KV
    cold = http.post(
        "/v1/completions",
        json={"model": TINY_NAME, "prompt": m["token_ids"], "max_tokens": 8, "temperature": 0.0},
    )
    assert cold.status_code == 200, cold.text
    assert cold.json()["usage"]["prompt_tokens"] == m["num_tokens"]
    assert g1["text"] == cold.json()["choices"][0]["text"]
    assert http.post("/states/merge", json={"state_ids": [a]}).status_code == 400
    assert http.post("/states/merge", json={"state_ids": [a, "nope"]}).status_code == 404


def test_states_spill_over_budget_and_come_back(tiny_model_dir, tmp_path) -> None:
    settings = tiny_settings(tiny_model_dir, tmp_path)
    per_token = 2 * 2 * 2 * 16 * 4  # tiny model: layers * (K, V) * kv_heads * head_dim * fp32
    settings.state_memory_bytes = 5 * settings.block_size * per_token  # 2 or 3 states
    with running(settings) as server, httpx.Client(base_url=server.base_url, timeout=60) as http:
        ids = [create_state(http, f"{TEXT} number {i}")["id"] for i in range(6)]
        expected = {i: generate(http, i)["text"] for i in ids}
        states = server.app.state.states
        assert states.residency.bytes <= settings.state_memory_bytes
        places = [http.get(f"/states/{i}").json()["location"] for i in ids]
        assert "disk" in places and "memory" in places
        spilled = next(i for i, p in zip(ids, places, strict=True) if p == "disk")
        assert http.get(f"/states/{spilled}").json()["file_bytes"] > 0
        for i in ids:  # every state still usable, identical after a trip to disk
            assert generate(http, i)["text"] == expected[i]
        assert states.residency.bytes <= settings.state_memory_bytes

        spilled = next(i for i in ids if http.get(f"/states/{i}").json()["location"] == "disk")
        path = settings.cache_dir / "states" / f"{spilled}.gbstate"
        path.write_bytes(path.read_bytes()[:100])  # damaged on disk: recomputed from tokens
        r = http.post("/generate/token", json={"state_id": spilled, "max_tokens": 4})
        assert r.status_code == 200, r.text
        assert http.get(f"/states/{spilled}").json()["location"] == "memory"


def test_states_survive_a_restart_and_export_import(tiny_model_dir, tmp_path) -> None:
    settings = tiny_settings(tiny_model_dir, tmp_path)
    with running(settings) as server, httpx.Client(base_url=server.base_url, timeout=60) as http:
        s = create_state(http, seed=11)
        child = generate(http, s["id"], commit=True)["child_state_id"]
        expected = generate(http, child)["text"]
        exported = http.post(f"/states/{child}/export", json={"name": "kept"}).json()
        assert exported["name"] == "kept" and exported["bytes"] > 0
        download = http.get(f"/states/{child}/export")
        assert download.headers["content-type"] == "application/octet-stream"
    with running(settings) as server, httpx.Client(base_url=server.base_url, timeout=60) as http:
        got = http.get(f"/states/{child}").json()
        assert got["location"] == "disk" and got["parent_id"] == s["id"]
        assert generate(http, child)["text"] == expected
        r = http.post("/states/import", json={"name": "kept"})
        assert r.status_code == 201, r.text
        imported = r.json()
        assert imported["metadata"]["imported_from"] == child and imported["id"] != child
        assert generate(http, imported["id"])["text"] == expected
        r = http.post(
            "/states/import",
            content=download.content,
            headers={"content-type": "application/octet-stream"},
        )
        assert r.status_code == 201 and generate(http, r.json()["id"])["text"] == expected
        assert {"name": "kept", "bytes": exported["bytes"]} in http.get("/states/exports").json()[
            "data"
        ]
        assert http.delete("/states/exports/kept").status_code == 204
        assert http.delete("/states/exports/kept").status_code == 404
        assert http.post("/states/import", json={"name": "kept"}).status_code == 404


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],
        lambda b: b[:100] + bytes([b[100] ^ 0xFF]) + b[101:],
        lambda b: b"not a state file at all",
    ],  # fmt: skip
)
def test_damaged_state_files_are_refused_whole(
    tiny_server: LiveServer, http: httpx.Client, damage
) -> None:
    s = create_state(http)
    data = http.get(f"/states/{s['id']}/export").content
    before = all_state_ids(http)
    blocks = blocks_used(tiny_server)
    r = http.post(
        "/states/import", content=damage(data), headers={"content-type": "application/octet-stream"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_state_file"
    assert all_state_ids(http) == before  # nothing was imported
    assert blocks_used(tiny_server) == blocks


def test_state_files_of_another_model_and_bad_names_are_refused(
    tiny_server: LiveServer, http: httpx.Client
) -> None:
    from glassbox.states import files

    s = create_state(http)
    loaded = files.decode(http.get(f"/states/{s['id']}/export").content)
    other = files.encode("f" * 64, loaded.token_ids, loaded.kv, loaded.record)
    r = http.post(
        "/states/import", content=other, headers={"content-type": "application/octet-stream"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_mismatch"
    for name in ["../escape", "/etc/passwd", ".hidden", "a/b", "..", ""]:
        r = http.post(f"/states/{s['id']}/export", json={"name": name})
        assert r.status_code == 400 and r.json()["error"]["param"] == "name", (name, r.text)
        r = http.post("/states/import", json={"name": name})  # refused, never looked up
        assert r.status_code == 400 and r.json()["error"]["param"] == "name", (name, r.text)
    r = http.post("/states/import", json={"name": "never-exported"})
    assert r.status_code == 404

    limit = tiny_server.app.state.states.max_file_bytes
    r = http.post("/states/import", content=b"x" * (limit + 1),
                  headers={"content-type": "application/octet-stream"})  # fmt: skip
    assert r.status_code == 413
    huge = zstandard.ZstdCompressor().compress(b"\0" * (limit + 1))  # a decompression bomb
    r = http.post("/states/import", content=huge,
                  headers={"content-type": "application/octet-stream"})  # fmt: skip
    assert r.status_code == 400 and "more than a state" in r.json()["error"]["message"]


def test_stop_sequences_and_a_variant(http: httpx.Client) -> None:
    s = create_state(http)
    free = generate(http, s["id"], max_tokens=16, temperature=0.0)
    cut = free["text"][len(free["text"]) // 2 :][:3]
    stopped = generate(http, s["id"], max_tokens=16, temperature=0.0, stop_sequences=[cut])
    assert stopped["finish_reason"] == "stop"
    assert stopped["text"] == free["text"][: free["text"].index(cut)]

    variant = pirate_variant(http, "states")
    steered = generate(http, s["id"], max_tokens=16, temperature=0.0, variant=variant)
    assert steered["tokens"] != free["tokens"]
    again = generate(http, s["id"], max_tokens=16, temperature=0.0)
    assert again["tokens"] == free["tokens"]  # the state itself is untouched by the variant


async def test_concurrent_use_of_one_state_leaks_no_blocks(tiny_model_dir, tmp_path) -> None:
    """Generations (committed or not, some abandoned), forks, rollbacks and deletes of one
    state's family at once; once every state is deleted the pool is back where it began.

    Every engine step takes 20 ms more, so an abandoned generation (400 greedy tokens, 8 s at
    least) is still running when its client gives up after 1 s: the client's hang-up is what
    ends it, and nothing it started may stay behind."""
    settings = tiny_settings(tiny_model_dir, tmp_path)
    with contextmanager(live)(settings, step_delay=0.02) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
            baseline = blocks_used(server)
            r = await http.post("/states", json={"text": TEXT})
            assert r.status_code == 201, r.text
            root = r.json()

            async def gen(i: int) -> str | None:
                max_tokens, commit = 6 + i % 5, i % 2 == 0
                body = {"state_id": root["id"], "max_tokens": max_tokens, "seed": i,
                        "commit": commit}  # fmt: skip
                r = await http.post("/generate/token", json=body)
                assert r.status_code == 200, r.text
                out = r.json()
                n = len(out["tokens"])
                ended = out["tokens"][-1]["token"] == "<|im_end|>"  # the tiny model's EOS
                assert out["state_id"] == root["id"]
                assert out["finish_reason"] == ("stop" if ended else "length")
                assert n == max_tokens or (ended and n < max_tokens)
                assert out["usage"] == {
                    "prompt_tokens": root["num_tokens"],
                    "completion_tokens": n,
                    "cached_tokens": root["num_tokens"] - 1,
                }
                assert (out["child_state_id"] is not None) == commit
                if commit:
                    child = (await http.get(f"/states/{out['child_state_id']}")).json()
                    generated = [t["token_id"] for t in out["tokens"]]
                    assert child["token_ids"] == root["token_ids"] + generated
                    assert child["parent_id"] == root["id"]
                return out["child_state_id"]

            async def fork(i: int) -> str:
                r = await http.post(f"/states/{root['id']}/fork", json={"token_index": 3 + i})
                assert r.status_code == 201, r.text
                assert r.json()["token_ids"] == root["token_ids"][: 3 + i]
                child = r.json()["id"]
                r = await http.post(f"/states/{child}/rollback", json={"token_index": 2})
                assert r.status_code == 200, r.text
                assert r.json()["token_ids"] == root["token_ids"][:2]
                return child

            async def abandoned() -> None:
                body = {"state_id": root["id"], "max_tokens": 400, "temperature": 0.0,
                        "commit": True}  # fmt: skip
                with pytest.raises(httpx.ReadTimeout):  # the client gives up and hangs up
                    await http.post("/generate/token", json=body, timeout=1.0)

            results = await asyncio.gather(
                *(gen(i) for i in range(12)), *(fork(i) for i in range(6)),
                *(abandoned() for _ in range(4)),
            )  # fmt: skip
            ids = {root["id"]} | {r for r in results if isinstance(r, str)}
            assert len(ids) == 1 + 6 + 6  # the root, the committed generations, the forks

            # The abandoned generations' aborts reach the engine: nothing runs or waits long
            # before they could have finished (8 s), and none of them committed a child.
            def quiet() -> bool:
                stats = server.engine.stats()
                return stats["running"] == 0 and stats["waiting"] == 0

            assert await async_wait_until(quiet, timeout=4.0), server.engine.stats()
            listed = (await http.get("/states", params={"limit": 100})).json()
            assert {d["id"] for d in listed["data"]} == ids and not listed["has_more"]
            for state_id in ids:
                assert (await http.delete(f"/states/{state_id}")).status_code == 200
            assert server.wait_idle(baseline)["kv_blocks_used"] == baseline
