"""Every stored object has an owner: another principal's state, export or variant is a 404
on every route, and lists show only the caller's own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from helpers.server import TINY_NAME, LiveServer

from glassbox.api.deps import current_principal
from glassbox.principal import LOCAL, Principal

BOB = Principal("bob")


@contextmanager
def acting_as(server: LiveServer, principal: Principal) -> Iterator[None]:
    """Requests in the block come from `principal` (what API keys will produce)."""
    server.app.dependency_overrides[current_principal] = lambda: principal
    try:
        yield
    finally:
        server.app.dependency_overrides.pop(current_principal, None)


def _not_found(r: httpx.Response, code: str) -> None:
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == code


def test_another_owners_states_and_exports_are_not_found(
    tiny_server: LiveServer, http: httpx.Client
) -> None:
    mine = http.post("/states", json={"text": "The sea is blue and the sky is"}).json()
    sid = mine["id"]
    name = f"owned-{sid}"
    assert http.post(f"/states/{sid}/export", json={"name": name}).status_code == 200

    with acting_as(tiny_server, BOB):
        theirs = http.post("/states", json={"text": "Bob's own state"}).json()
        assert theirs["id"] != sid
        for r in [
            http.get(f"/states/{sid}"),
            http.delete(f"/states/{sid}"),
            http.post(f"/states/{sid}/fork"),
            http.post(f"/states/{sid}/rollback", json={"token_index": 1}),
            http.post(f"/states/{sid}/checkpoints", json={"name": "c"}),
            http.get(f"/states/{sid}/history"),
            http.get(f"/states/{sid}/diff/{theirs['id']}"),
            http.get(f"/states/{theirs['id']}/diff/{sid}"),
            http.post("/states/merge", json={"state_ids": [theirs["id"], sid]}),
            http.post(f"/states/{sid}/export", json={"name": "stolen"}),
            http.get(f"/states/{sid}/export"),
            http.post("/generate/token", json={"state_id": sid, "max_tokens": 1}),
            http.post("/generate/beam", json={"state_id": sid, "max_length": 1}),
            http.get(f"/analysis/tokens/{sid}"),
            http.post(f"/analysis/attention/{sid}", json={"layer": 0}),
            http.post(f"/analysis/cache/{sid}"),
        ]:
            _not_found(r, "state_not_found")
        listed = [s["id"] for s in http.get("/states", params={"limit": 100}).json()["data"]]
        assert listed == [theirs["id"]]
        assert http.get("/states", params={"parent_id": sid}).json()["data"] == []
        assert http.get("/states/exports").json()["data"] == []
        _not_found(http.post("/states/import", json={"name": name}), "export_not_found")
        _not_found(http.delete(f"/states/exports/{name}"), "export_not_found")
        assert http.delete(f"/states/{theirs['id']}").status_code == 200

    # Nothing of the owner's was touched.
    again = http.get(f"/states/{sid}").json()
    assert again["token_ids"] == mine["token_ids"] and again["checkpoints"] == {}
    assert name in [f["name"] for f in http.get("/states/exports").json()["data"]]
    assert http.delete(f"/states/exports/{name}").status_code == 204
    assert http.delete(f"/states/{sid}").status_code == 200


def test_another_owners_variants_are_not_found(tiny_server: LiveServer, http: httpx.Client) -> None:
    body = {"session_id": "owned-ns", "variant_id": "mine", "base_variant_id": "default"}
    assert http.post("/variants", json=body).status_code == 201
    http.post("/features/steer", json={"session_id": "owned-ns", "label": "Pirate speech",
                                       "value": 0.5, "variant_id": "mine"})  # fmt: skip
    before = http.get("/variants/owned-ns/mine").json()["variant"]
    assert len(before["edits"]) == 1

    with acting_as(tiny_server, BOB):
        _not_found(http.get("/variants/owned-ns/mine"), "variant_not_found")
        _not_found(http.delete("/variants/owned-ns/mine"), "variant_not_found")
        empty = {"base_model": TINY_NAME, "edits": [], "scopes": []}
        _not_found(
            http.put("/variants/owned-ns/mine", json={"variant": empty}), "variant_not_found"
        )
        _not_found(
            http.post("/features/steer", json={"session_id": "owned-ns", "variant_id": "mine",
                                               "label": "Pirate speech", "value": 1.0}),
            "variant_not_found",
        )  # fmt: skip
        chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1,
                "session_id": "owned-ns", "variant_id": "mine"}  # fmt: skip
        _not_found(http.post("/v1/chat/completions", json=chat), "variant_not_found")
        # Bob's namespace of the same name is his own: just his empty default.
        listed = http.get("/variants", params={"session_id": "owned-ns"}).json()["data"]
        assert [v["variant_id"] for v in listed] == ["default"]
        assert listed[0]["variant"]["edits"] == []
        assert (
            http.get("/features/modified", params={"session_id": "owned-ns"}).json()["edits"] == []
        )
        # Bob can make his own "mine" without a conflict with the owner's.
        assert http.post("/variants", json=body).status_code == 201

    assert http.get("/variants/owned-ns/mine").json()["variant"] == before
    assert [v["variant_id"] for v in http.get("/variants", params={"session_id": "owned-ns"})
            .json()["data"]] == ["default", "mine"]  # fmt: skip


def test_the_local_principal_is_the_default_caller() -> None:
    assert LOCAL.tenant == "local" and "admin" in LOCAL.scopes
    for bad in ["", "a/b", "..", "x" * 129]:
        try:
            Principal(bad)
        except ValueError:
            continue
        raise AssertionError(f"tenant id {bad!r} was accepted")


def test_another_owners_chat_sessions_are_not_found(tiny_server: LiveServer, http) -> None:
    body = {"user_id": "u-own", "initial_message": "hello", "temperature": 0, "max_tokens": 3}
    r = http.post("/llm/chat/", json=body)
    assert r.status_code == 200, r.text
    sid = r.json()["session_id"]
    with acting_as(tiny_server, BOB):
        _not_found(http.get(f"/llm/chat/{sid}/history/"), "session_not_found")
        _not_found(
            http.post(f"/llm/chat/{sid}/message/", json={"user_message": "x"}),
            "session_not_found",
        )
        _not_found(http.delete(f"/llm/chat/{sid}/"), "session_not_found")
        listed = http.get("/llm/chat/sessions/", params={"user_id": "u-own"}).json()
        assert listed["total"] == 0 and listed["data"] == []
    assert len(http.get(f"/llm/chat/{sid}/history/").json()) == 2  # nothing of it touched
    assert http.delete(f"/llm/chat/{sid}/").status_code == 200
