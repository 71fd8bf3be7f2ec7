"""The rules of the state tree: deleting re-attaches children to the grandparent, children
inherit checkpoints, rollback truncates only its own state, and a state whose spilled file is
gone is recomputed from its tokens (with the same seeded output)."""

from __future__ import annotations

import httpx
from helpers.http import TEXT, create_state
from helpers.server import LiveServer, running, tiny_settings


def generate(http: httpx.Client, state_id: str, **kw) -> dict:
    body = {"state_id": state_id, "max_tokens": 8, "temperature": 1.0, "seed": 5, **kw}
    r = http.post("/generate/token", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def state(http: httpx.Client, state_id: str) -> dict:
    r = http.get(f"/states/{state_id}")
    assert r.status_code == 200, r.text
    return r.json()


def fork(http: httpx.Client, state_id: str, token_index: int | None = None) -> dict:
    body = {} if token_index is None else {"token_index": token_index}
    r = http.post(f"/states/{state_id}/fork", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def history(http: httpx.Client, state_id: str) -> list[str]:
    r = http.get(f"/states/{state_id}/history")
    assert r.status_code == 200, r.text
    return [d["id"] for d in r.json()["data"]]


def checkpoint(http: httpx.Client, state_id: str, name: str, token_index: int) -> dict:
    r = http.post(
        f"/states/{state_id}/checkpoints", json={"name": name, "token_index": token_index}
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_deleting_a_state_reattaches_its_children_to_its_parent(http: httpx.Client) -> None:
    root = create_state(http)
    middle = fork(http, root["id"])
    a = fork(http, middle["id"], 6)
    b_id = generate(http, middle["id"], max_tokens=3, commit=True)["child_state_id"]
    grandchild = fork(http, a["id"])
    assert history(http, grandchild["id"]) == [grandchild["id"], a["id"], middle["id"], root["id"]]

    r = http.delete(f"/states/{middle['id']}")
    assert r.status_code == 200, r.text
    assert state(http, a["id"])["parent_id"] == root["id"]
    assert state(http, b_id)["parent_id"] == root["id"]
    assert state(http, grandchild["id"])["parent_id"] == a["id"]  # only direct children move
    assert history(http, grandchild["id"]) == [grandchild["id"], a["id"], root["id"]]
    assert history(http, b_id) == [b_id, root["id"]]
    listed = http.get("/states", params={"parent_id": root["id"], "limit": 100}).json()["data"]
    assert [d["id"] for d in listed] == [a["id"], b_id]

    # A root's children become roots.
    assert http.delete(f"/states/{root['id']}").status_code == 200
    assert state(http, a["id"])["parent_id"] is None
    assert state(http, b_id)["parent_id"] is None
    assert history(http, grandchild["id"]) == [grandchild["id"], a["id"]]


def test_children_inherit_checkpoints(http: httpx.Client) -> None:
    root = create_state(http)
    checkpoint(http, root["id"], "early", 3)
    checkpoint(http, root["id"], "middle", 7)
    marked = checkpoint(http, root["id"], "late", 12)
    assert marked["checkpoints"] == {"early": 3, "middle": 7, "late": 12}

    assert fork(http, root["id"])["checkpoints"] == {"early": 3, "middle": 7, "late": 12}
    assert fork(http, root["id"], 7)["checkpoints"] == {"early": 3, "middle": 7}
    assert fork(http, root["id"], 6)["checkpoints"] == {"early": 3}
    assert fork(http, root["id"], 2)["checkpoints"] == {}

    child_id = generate(http, root["id"], max_tokens=3, commit=True)["child_state_id"]
    assert state(http, child_id)["checkpoints"] == {"early": 3, "middle": 7, "late": 12}

    # Inherited, not shared: a child's own checkpoint stays its own, and its rollback to an
    # inherited one works.
    checkpoint(http, child_id, "own", root["num_tokens"] + 1)
    assert "own" not in state(http, root["id"])["checkpoints"]
    r = http.post(f"/states/{child_id}/rollback", json={"checkpoint": "middle"})
    assert r.status_code == 200, r.text
    assert r.json()["token_ids"] == root["token_ids"][:7]
    assert r.json()["checkpoints"] == {"early": 3, "middle": 7}
    assert state(http, root["id"])["checkpoints"] == {"early": 3, "middle": 7, "late": 12}


def test_rollback_truncates_only_that_state(tiny_server: LiveServer, http: httpx.Client) -> None:
    parent = create_state(http, temperature=1.0)
    n = parent["num_tokens"]
    whole = fork(http, parent["id"])  # shares every block, the partial last one included
    head = fork(http, parent["id"], n - 2)
    committed_id = generate(http, parent["id"], max_tokens=4, commit=True)["child_state_id"]
    committed = state(http, committed_id)
    children = [whole, head, committed]
    before = {c["id"]: generate(http, c["id"], seed=11)["tokens"] for c in children}

    cut = 9  # inside the first block (16 tokens), shared by every child
    r = http.post(f"/states/{parent['id']}/rollback", json={"token_index": cut})
    assert r.status_code == 200, r.text
    assert r.json()["token_ids"] == parent["token_ids"][:cut] and r.json()["num_tokens"] == cut
    # The truncated parent writes new KV where its children's tokens sit: they must not see it.
    grown = generate(http, parent["id"], max_tokens=12, commit=True, seed=2)
    assert len(state(http, grown["child_state_id"])["token_ids"]) == cut + 12

    for c in children:
        now = state(http, c["id"])
        assert now["token_ids"] == c["token_ids"] and now["num_tokens"] == c["num_tokens"]
        assert now["parent_id"] == parent["id"]
        assert generate(http, c["id"], seed=11)["tokens"] == before[c["id"]]


def spilling_settings(tiny_model_dir, tmp_path):
    per_token = 2 * 2 * 2 * 16 * 4  # tiny model: layers * (K, V) * kv_heads * head_dim * fp32
    settings = tiny_settings(tiny_model_dir, tmp_path)
    budget = 5 * settings.block_size * per_token  # 2 or 3 of the states below
    return settings.model_copy(update={"state_memory_bytes": budget})


def test_a_spilled_state_whose_file_is_deleted_is_recomputed(tiny_model_dir, tmp_path) -> None:
    settings = spilling_settings(tiny_model_dir, tmp_path)
    with running(settings) as server, httpx.Client(base_url=server.base_url, timeout=60) as http:
        ids = [create_state(http, f"{TEXT} number {i}")["id"] for i in range(6)]
        expected = {i: generate(http, i)["tokens"] for i in ids}
        spilled = [i for i in ids if state(http, i)["location"] == "disk"]
        assert spilled, [state(http, i)["location"] for i in ids]
        gone = spilled[0]
        path = settings.cache_dir / "states" / f"{gone}.gbstate"
        assert state(http, gone)["file_bytes"] == path.stat().st_size
        path.unlink()

        s = state(http, gone)
        assert s["file_bytes"] is None and s["location"] == "tokens"
        assert generate(http, gone)["tokens"] == expected[gone]  # recomputed: same output
        back = state(http, gone)
        assert back["location"] == "memory" and back["token_ids"] == s["token_ids"]
        for i in ids:  # the others are untouched by it
            assert generate(http, i)["tokens"] == expected[i]


def test_a_state_whose_file_is_missing_after_a_restart_is_recomputed(
    tiny_model_dir, tmp_path
) -> None:
    settings = spilling_settings(tiny_model_dir, tmp_path)
    with running(settings) as server, httpx.Client(base_url=server.base_url, timeout=60) as http:
        ids = [create_state(http, f"{TEXT} number {i}")["id"] for i in range(4)]
        child = generate(http, ids[0], max_tokens=4, commit=True)["child_state_id"]
        ids.append(child)
        expected = {i: generate(http, i)["tokens"] for i in ids}
        tokens = {i: state(http, i)["token_ids"] for i in ids}
    lost = [ids[1], child]  # a crash before they were written
    for i in lost:
        (settings.cache_dir / "states" / f"{i}.gbstate").unlink()
    with running(settings) as server, httpx.Client(base_url=server.base_url, timeout=60) as http:
        for i in ids:
            s = state(http, i)
            assert s["location"] == ("tokens" if i in lost else "disk"), i
            assert s["token_ids"] == tokens[i]
        assert state(http, child)["parent_id"] == ids[0]
        for i in ids:
            assert generate(http, i)["tokens"] == expected[i]
        assert state(http, child)["location"] in ("memory", "disk")
