"""Two tenants on a live server with API keys required: tenant A makes one object of every
stored kind (a variant, a KV state with a fork and an export, a chat session, an embedding job,
a file, a vector store with that file), then tenant B walks every path and method of the
OpenAPI schema with its own keys. Each route has a row in `TABLE`, and a route of the schema
without one fails the walk: a new route needs a tenant case.

The row kinds:
  owned             the route takes an id of a stored object (in its path or its body): B
                    gets a 404 in OpenAI's error shape for A's id, whatever the method, the
                    same body (the id aside) as for an id that never existed, and A's objects
                    read the same with A's key afterwards;
  list              B's list holds none of A's objects;
  create/stateless  no stored object of another tenant is involved: what B makes is B's
                    (A cannot read or list it), and B's answer carries nothing of A's;
  open/admin        /health and /metrics (open, nothing of A's in them), and the admin
                    routes (403 for a user key; admin keys are the server operator's, who
                    sees every tenant's keys and, with X-Glassbox-Tenant, its objects).
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.server import TINY_NAME, LiveServer, running, tiny_settings
from helpers.waiting import wait_until

from glassbox.auth import KeyService

SECRET = "Alpha's secret: the volcano under the lighthouse erupts every ninth winter."
B_TEXT = "Beta's notes: bread dough rises until it has doubled in size."
HI = [{"role": "user", "content": "hi"}]


# --- the server and the two tenants ---------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    settings = tiny_settings(tiny_model_dir, tmp_path_factory.mktemp("cache"))
    with running(settings.model_copy(update={"api_keys": "required"})) as live:
        yield live


def _client(server: LiveServer, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=server.base_url, headers=headers, timeout=60)


@dataclass
class Tenant:
    name: str
    user: httpx.Client
    admin: httpx.Client
    user_key_id: str
    admin_key_id: str


@pytest.fixture(scope="module")
def tenants(server: LiveServer) -> Iterator[tuple[Tenant, Tenant]]:
    keys: KeyService = server.app.state.keys
    made = []
    for name in ("alpha", "beta"):
        user, admin = keys.create(name, ["user"]), keys.create(name, ["admin"])
        made.append(Tenant(name, _client(server, user.key), _client(server, admin.key),
                           user.record.id, admin.record.id))  # fmt: skip
    yield made[0], made[1]
    for t in made:
        t.user.close()
        t.admin.close()


def _ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    return r.json() if r.headers.get("content-type", "").startswith("application/json") else r


def _lookalike(value: str, rng: random.Random) -> str:
    """An id of the same shape as `value` (its prefix up to the first '_' or '-' kept, every
    other letter or digit drawn again) that was never made."""
    cuts = [i for i in (value.find("_"), value.find("-")) if i >= 0]
    first = min(cuts) if cuts else -1
    head, tail = value[: first + 1], value[first + 1 :]
    hexish = set(string.hexdigits.lower())

    def redraw(c: str) -> str:
        if c.isdigit():
            return rng.choice(string.digits)
        if c in hexish:
            return rng.choice("abcdef")
        if c.isalpha():
            return rng.choice(string.ascii_lowercase if c.islower() else string.ascii_uppercase)
        return c

    return head + "".join(redraw(c) for c in tail)


@dataclass
class World:
    """A's objects (`a`: kind -> id), B's own (`b`), and ids of A's shape that never existed."""

    server: LiveServer
    alpha: Tenant
    beta: Tenant
    a: dict[str, str]
    b: dict[str, str]
    never: dict[str, str]
    snapshot: dict[str, Any]


def _wait_job(http: httpx.Client, job_id: str) -> None:
    def done() -> bool:
        return http.get(f"/api/v1/embeddings/jobs/{job_id}").json()["status"] in (
            "completed", "failed", "cancelled",
        )  # fmt: skip

    assert wait_until(done, timeout=60), f"job {job_id} did not finish"


def _wait_store(http: httpx.Client, store_id: str) -> None:
    def done() -> bool:
        return http.get(f"/v1/vector_stores/{store_id}").json()["file_counts"]["in_progress"] == 0

    assert wait_until(done, timeout=60), f"vector store {store_id} did not finish ingesting"


def _upload(http: httpx.Client, name: str, text: str) -> str:
    r = http.post(
        "/v1/files", files={"file": (name, text.encode())}, data={"purpose": "assistants"}
    )
    return _ok(r)["id"]


def _make_alpha(a: httpx.Client) -> dict[str, str]:
    ids: dict[str, str] = {"ns": "ns-alpha-7f3k", "variant": "var-alpha-91qz",
                           "export": "export-alpha-5x2m", "user_id": "user-alpha-3c8d"}  # fmt: skip
    _ok(a.post("/variants", json={"session_id": ids["ns"], "variant_id": ids["variant"],
                                  "base_variant_id": "default"}), 201)  # fmt: skip
    ids["state"] = _ok(a.post("/states", json={"text": SECRET}), 201)["id"]
    ids["fork"] = _ok(a.post(f"/states/{ids['state']}/fork"), 201)["id"]
    _ok(a.post(f"/states/{ids['state']}/export", json={"name": ids["export"]}))
    chat = _ok(a.post("/llm/chat/", json={"user_id": ids["user_id"], "initial_message": SECRET,
                                          "temperature": 0, "max_tokens": 2}))  # fmt: skip
    ids["session"] = chat["session_id"]
    ids["session_state"] = chat["session"]["state_id"]
    job = _ok(a.post("/api/v1/embeddings/jobs", json={"user_id": ids["user_id"],
              "content": SECRET, "collection_id": "col-alpha-4k2j"}), 202)  # fmt: skip
    ids["job"] = job["job_id"]
    ids["file"] = _upload(a, "alpha.txt", SECRET)
    store = _ok(a.post("/v1/vector_stores", json={"name": "alpha", "file_ids": [ids["file"]]}))
    ids["store"] = store["id"]
    _wait_job(a, ids["job"])
    _wait_store(a, ids["store"])
    return ids


def _make_beta(b: httpx.Client) -> dict[str, str]:
    ids = {"b_state": _ok(b.post("/states", json={"text": B_TEXT}), 201)["id"]}
    ids["b_file"] = _upload(b, "beta.txt", B_TEXT)
    store = _ok(b.post("/v1/vector_stores", json={"name": "beta", "file_ids": [ids["b_file"]]}))
    ids["b_store"] = store["id"]
    _wait_store(b, ids["b_store"])
    return ids


def _snapshot(w: World) -> dict[str, Any]:
    """Everything of A's, as A reads it (fields that move by themselves left out)."""
    a, ids = w.alpha.user, w.a

    def state(sid: str) -> dict[str, Any]:
        s = _ok(a.get(f"/states/{sid}"))
        return {k: s[k] for k in ("id", "parent_id", "token_ids", "checkpoints", "metadata",
                                  "modified", "config")}  # fmt: skip

    store = _ok(a.get(f"/v1/vector_stores/{ids['store']}"))
    store.pop("last_active_at")
    search = _ok(a.post(f"/v1/vector_stores/{ids['store']}/search", json={"query": SECRET}))
    return {
        "variant": _ok(a.get(f"/variants/{ids['ns']}/{ids['variant']}")),
        "variants": _ok(a.get("/variants", params={"session_id": ids["ns"]})),
        "state": state(ids["state"]),
        "fork": state(ids["fork"]),
        "session_state": state(ids["session_state"]),
        "states": [s["id"] for s in _ok(a.get("/states", params={"limit": 100}))["data"]],
        "exports": _ok(a.get("/states/exports")),
        "history": _ok(a.get(f"/llm/chat/{ids['session']}/history/")),
        "sessions": _ok(a.get("/llm/chat/sessions/")),
        "job": _ok(a.get(f"/api/v1/embeddings/jobs/{ids['job']}")),
        "jobs": _ok(a.get("/api/v1/embeddings/jobs")),
        "file": _ok(a.get(f"/v1/files/{ids['file']}")),
        "file_content": a.get(f"/v1/files/{ids['file']}/content").content,
        "files": _ok(a.get("/v1/files")),
        "store": store,
        "store_files": _ok(a.get(f"/v1/vector_stores/{ids['store']}/files")),
        "store_file": _ok(a.get(f"/v1/vector_stores/{ids['store']}/files/{ids['file']}")),
        "search": search,
        "keys": [
            {
                f: k[f]
                for f in (
                    "id",
                    "status",
                    "scopes",
                    "name",
                    "expires_at",
                    "requests_per_minute",
                    "tokens_per_minute",
                )
            }  # fmt: skip
            for k in _ok(w.alpha.admin.get("/admin/keys", params={"tenant": "alpha"}))["data"]
        ],
    }


@pytest.fixture(scope="module")
def world(server: LiveServer, tenants: tuple[Tenant, Tenant]) -> World:
    alpha, beta = tenants
    a = _make_alpha(alpha.user)
    a["user_key"], a["admin_key"] = alpha.user_key_id, alpha.admin_key_id
    b = _make_beta(beta.user)
    rng = random.Random(14)
    never = {k: _lookalike(v, rng) for k, v in a.items()}
    w = World(server, alpha, beta, a, b, never, {})
    w.snapshot = _snapshot(w)
    return w


# --- the checks -----------------------------------------------------------------------------

Call = tuple[str, str, Any]  # method, path template, JSON body (or {"params": ...}) template


def _fill(template: Any, ids: dict[str, str]) -> Any:
    if isinstance(template, str):
        return template.format(**ids)
    if isinstance(template, dict):
        return {k: _fill(v, ids) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, ids) for v in template]
    return template


def _send(http: httpx.Client, call: Call, ids: dict[str, str]) -> httpx.Response:
    method, path, body = call
    path = _fill(path, ids)
    if isinstance(body, dict) and set(body) == {"params"}:
        return http.request(method, path, params=_fill(body["params"], ids))
    return http.request(method, path, json=_fill(body, ids) if body is not None else None)


def _without_ids(text: str, ids: dict[str, str]) -> str:
    for kind, value in sorted(ids.items(), key=lambda kv: -len(kv[1])):
        text = text.replace(value, f"<{kind}>")
    return text


def _not_found(r: httpx.Response, what: str) -> dict[str, Any]:
    assert r.status_code == 404, f"{what}: {r.status_code} {r.text}"
    body = r.json()
    assert set(body) == {"error"}, f"{what}: {body}"
    assert set(body["error"]) == {"message", "type", "param", "code"}, f"{what}: {body}"
    assert body["error"]["code"].endswith("_not_found"), f"{what}: {body}"
    return body


def owned(*calls: Call) -> Callable[[World], None]:
    """B gets a 404 for A's id, the same one (the id aside) as for an id that never existed,
    and A's objects read the same afterwards."""

    def check(w: World) -> None:
        for call in calls:
            what = f"{call[0]} {_fill(call[1], {**w.a, **w.b})} as beta"
            theirs = _send(w.beta.user, call, {**w.a, **w.b})
            nobodys = _send(w.beta.user, call, {**w.never, **w.b})
            _not_found(theirs, what)
            _not_found(nobodys, what + " (an id that never existed)")
            assert _without_ids(theirs.text, w.a) == _without_ids(nobodys.text, w.never), (
                f"{what}: A's id and an unknown id answer differently, so B can tell A's exists:"
                f"\n  {theirs.text}\n  {nobodys.text}"
            )
            assert theirs.headers.get("content-type") == nobodys.headers.get("content-type")
        _unchanged(w, calls[0])

    return check


def _unchanged(w: World, call: Call) -> None:
    now = _snapshot(w)
    for kind, before in w.snapshot.items():
        assert now[kind] == before, f"after {call[0]} {call[1]} as beta, A's {kind} changed"


def _nothing_of_alpha(w: World, r: httpx.Response, what: str) -> None:
    # The namespace and user id are names B may send too (a list echoes them): not A's.
    secret_ids = {k: v for k, v in w.a.items() if k not in ("ns", "user_id")}
    for kind, value in secret_ids.items():
        assert value not in r.text, f"{what}: A's {kind} {value!r} is in B's answer"
    assert SECRET not in r.text and "lighthouse" not in r.text, f"{what}: A's text leaked"


def listed(call: Call, *more: Call) -> Callable[[World], None]:
    """B's list (200) holds none of A's ids or text."""

    def check(w: World) -> None:
        for c in (call, *more):
            r = _send(w.beta.user, c, {**w.a, **w.b})
            _ok(r)
            _nothing_of_alpha(w, r, f"{c[0]} {c[1]} as beta")

    return check


def stateless(call: Call, status: int = 200, same_for_both: bool = False):
    """B's call works with B's key and its answer carries nothing of A's; `same_for_both`:
    A's answer to the same call is the same (nothing in it depends on the tenant)."""

    def check(w: World) -> None:
        r = _send(w.beta.user, call, {**w.a, **w.b})
        assert r.status_code == status, f"{call[0]} {call[1]} as beta: {r.status_code} {r.text}"
        _nothing_of_alpha(w, r, f"{call[0]} {call[1]} as beta")
        if same_for_both:
            assert _send(w.alpha.user, call, w.a).json() == r.json()

    return check


def both(*checks: Callable[[World], None]) -> Callable[[World], None]:
    def check(w: World) -> None:
        for c in checks:
            c(w)

    return check


def _user_forbidden(call: Call) -> Callable[[World], None]:
    def check(w: World) -> None:
        r = _send(w.beta.user, call, {**w.a, **w.b})
        assert r.status_code == 403, f"{call[0]} {call[1]} with a user key: {r.text}"
        assert r.json()["error"]["type"] == "permission_error"

    return check


# --- the create rows: what B makes is B's -----------------------------------------------------


def _alpha_cannot_see(w: World, read: str, lst: str, made: str) -> None:
    _not_found(w.alpha.user.get(read), f"A reading B's {made}")
    assert made not in w.alpha.user.get(lst).text, f"B's {made} is in A's list"


def create_state(w: World) -> None:
    made = _ok(w.beta.user.post("/states", json={"text": B_TEXT}), 201)["id"]
    _alpha_cannot_see(w, f"/states/{made}", "/states?limit=100", made)
    _unchanged(w, ("POST", "/states", None))


def create_file(w: World) -> None:
    made = _upload(w.beta.user, "beta-2.txt", B_TEXT)
    _alpha_cannot_see(w, f"/v1/files/{made}", "/v1/files", made)


def create_job(w: World) -> None:
    """B's job into a collection and user id of the same names as A's: B's own."""
    body = {"user_id": w.a["user_id"], "content": B_TEXT, "collection_id": "col-alpha-4k2j"}
    made = _ok(w.beta.user.post("/api/v1/embeddings/jobs", json=body), 202)["job_id"]
    _alpha_cannot_see(w, f"/api/v1/embeddings/jobs/{made}", "/api/v1/embeddings/jobs", made)
    _wait_job(w.beta.user, made)
    _unchanged(w, ("POST", "/api/v1/embeddings/jobs", None))


def search_own_store(w: World) -> None:
    """B's search of B's store for A's very text finds B's chunks only."""
    r = _ok(w.beta.user.post(f"/v1/vector_stores/{w.b['b_store']}/search",
                             json={"query": SECRET, "max_num_results": 50}))  # fmt: skip
    assert r["data"], "B's search found nothing of B's own"
    assert {hit["file_id"] for hit in r["data"]} == {w.b["b_file"]}
    assert all("lighthouse" not in c["text"] for hit in r["data"] for c in hit["content"])


# --- the open and admin rows ------------------------------------------------------------------


def open_route(path: str, statuses: tuple[int, ...] = (200,)) -> Callable[[World], None]:
    def check(w: World) -> None:
        r = httpx.get(w.server.base_url + path)
        assert r.status_code in statuses, f"{path} without a key: {r.status_code} {r.text}"
        _nothing_of_alpha(w, r, f"GET {path}")

    return check


def admin_list(w: World) -> None:
    """The admin routes are the server operator's: a tenant's user key gets a 403 (and so
    sees no key of another tenant); an admin key lists every tenant's keys, by design."""
    _user_forbidden(("GET", "/admin/keys", None))(w)
    listed_keys = _ok(w.beta.admin.get("/admin/keys"))["data"]
    assert {w.a["user_key"], w.a["admin_key"]} <= {k["id"] for k in listed_keys}
    assert all("key" not in k and "digest" not in k for k in listed_keys)


def admin_create(w: World) -> None:
    _user_forbidden(("POST", "/admin/keys", {"scopes": ["user"]}))(w)
    _user_forbidden(("POST", "/admin/keys", {"scopes": ["admin"], "tenant": "beta"}))(w)
    made = _ok(w.beta.admin.post("/admin/keys", json={"scopes": ["read"]}))
    assert made["tenant"] == "beta"
    _unchanged(w, ("POST", "/admin/keys", None))


def admin_update(w: World) -> None:
    _user_forbidden(("PATCH", "/admin/keys/{user_key}", {"scopes": ["admin"]}))(w)
    _user_forbidden(("PATCH", "/admin/keys/{admin_key}", {"requests_per_minute": 0}))(w)
    _unchanged(w, ("PATCH", "/admin/keys/{user_key}", None))
    _ok(w.alpha.user.get("/v1/models"))  # A's key still works


def admin_revoke(w: World) -> None:
    _user_forbidden(("DELETE", "/admin/keys/{user_key}", None))(w)
    _user_forbidden(("DELETE", "/admin/keys/{admin_key}", None))(w)
    _ok(w.alpha.user.get("/v1/models"))  # A's key still works


# --- the table ----------------------------------------------------------------------------------

CHAT = {"model": TINY_NAME, "messages": HI, "max_tokens": 1}
VARIANT_REF = {"session_id": "{ns}", "variant_id": "{variant}"}
EMPTY_VARIANT = {"base_model": TINY_NAME, "edits": [], "scopes": []}
EMBER_MSG = [{"role": "user", "content": "hello"}]
VS = "/v1/vector_stores"

TABLE: dict[tuple[str, str], tuple[str, Callable[[World], None]]] = {
    # OpenAI-compatible generation: a stored variant named in the body.
    ("POST", "/v1/chat/completions"): ("owned", both(
        owned(("POST", "/v1/chat/completions", {**CHAT, **VARIANT_REF})),
        stateless(("POST", "/v1/chat/completions", CHAT)))),
    ("POST", "/v1/completions"): ("owned", both(
        owned(("POST", "/v1/completions",
               {"model": TINY_NAME, "prompt": "hi", "max_tokens": 1, **VARIANT_REF})),
        stateless(("POST", "/v1/completions",
                   {"model": TINY_NAME, "prompt": "hi", "max_tokens": 1})))),
    ("GET", "/v1/models"): ("create/stateless",
                            stateless(("GET", "/v1/models", None), same_for_both=True)),
    ("GET", "/v1/models/{model_id}"): ("create/stateless", stateless(
        ("GET", f"/v1/models/{TINY_NAME}", None), same_for_both=True)),
    ("POST", "/tokenize"): ("create/stateless", stateless(
        ("POST", "/tokenize", {"prompt": "hello"}), same_for_both=True)),
    ("POST", "/detokenize"): ("create/stateless", stateless(
        ("POST", "/detokenize", {"tokens": [1, 2, 3]}), same_for_both=True)),
    # Features and variants: (namespace, variant id) of A's.
    ("POST", "/features/search"): ("owned", owned(
        ("POST", "/features/search", {"query": "pirate", **VARIANT_REF}))),
    ("POST", "/features/inspect"): ("owned", owned(
        ("POST", "/features/inspect", {"messages": HI, **VARIANT_REF}))),
    ("POST", "/features/steer"): ("owned", owned(
        ("POST", "/features/steer", {"label": "Pirate speech", "value": 0.5, **VARIANT_REF}))),
    ("GET", "/features/modified"): ("owned", owned(
        ("GET", "/features/modified", {"params": VARIANT_REF}))),
    ("POST", "/variants"): ("owned", owned(
        ("POST", "/variants", {"session_id": "{ns}", "variant_id": "new-beta",
                               "base_variant_id": "{variant}"}))),
    ("GET", "/variants"): ("list", listed(
        ("GET", "/variants", {"params": {"session_id": "{ns}"}}))),
    ("GET", "/variants/{session_id}/{variant_id}"): ("owned", owned(
        ("GET", "/variants/{ns}/{variant}", None))),
    ("PUT", "/variants/{session_id}/{variant_id}"): ("owned", owned(
        ("PUT", "/variants/{ns}/{variant}", {"variant": EMPTY_VARIANT}))),
    ("DELETE", "/variants/{session_id}/{variant_id}"): ("owned", owned(
        ("DELETE", "/variants/{ns}/{variant}", None))),
    # KV states, their exports, generation and analysis from them.
    ("POST", "/states"): ("create/stateless", create_state),
    ("GET", "/states"): ("list", listed(
        ("GET", "/states", {"params": {"limit": 100}}),
        ("GET", "/states", {"params": {"parent_id": "{state}"}}))),
    ("GET", "/states/exports"): ("list", listed(("GET", "/states/exports", None))),
    ("DELETE", "/states/exports/{name}"): ("owned", owned(
        ("DELETE", "/states/exports/{export}", None))),
    ("GET", "/states/{state_id}"): ("owned", owned(
        ("GET", "/states/{state}", None), ("GET", "/states/{fork}", None),
        ("GET", "/states/{session_state}", None))),
    ("DELETE", "/states/{state_id}"): ("owned", owned(
        ("DELETE", "/states/{state}", None), ("DELETE", "/states/{session_state}", None))),
    ("POST", "/states/merge"): ("owned", owned(
        ("POST", "/states/merge", {"state_ids": ["{b_state}", "{state}"]}),
        ("POST", "/states/merge", {"state_ids": ["{state}", "{b_state}"]}))),
    ("POST", "/states/import"): ("owned", owned(
        ("POST", "/states/import", {"name": "{export}"}))),
    ("POST", "/states/{state_id}/fork"): ("owned", owned(
        ("POST", "/states/{state}/fork", None))),
    ("POST", "/states/{state_id}/rollback"): ("owned", owned(
        ("POST", "/states/{state}/rollback", {"token_index": 1}))),
    ("POST", "/states/{state_id}/checkpoints"): ("owned", owned(
        ("POST", "/states/{state}/checkpoints", {"name": "c"}))),
    ("GET", "/states/{state_id}/history"): ("owned", owned(
        ("GET", "/states/{fork}/history", None))),
    ("GET", "/states/{state_id}/diff/{other_id}"): ("owned", owned(
        ("GET", "/states/{state}/diff/{b_state}", None),
        ("GET", "/states/{b_state}/diff/{state}", None))),
    ("POST", "/states/{state_id}/export"): ("owned", owned(
        ("POST", "/states/{state}/export", {"name": "stolen"}))),
    ("GET", "/states/{state_id}/export"): ("owned", owned(
        ("GET", "/states/{state}/export", None))),
    ("POST", "/generate/token"): ("owned", owned(
        ("POST", "/generate/token", {"state_id": "{state}", "max_tokens": 1}))),
    ("POST", "/generate/beam"): ("owned", owned(
        ("POST", "/generate/beam", {"state_id": "{state}", "max_length": 1}))),
    ("GET", "/analysis/tokens/{state_id}"): ("owned", owned(
        ("GET", "/analysis/tokens/{state}", None))),
    ("POST", "/analysis/attention/{state_id}"): ("owned", owned(
        ("POST", "/analysis/attention/{state}", {"layer": 0}))),
    ("POST", "/analysis/cache/{state_id}"): ("owned", owned(
        ("POST", "/analysis/cache/{state}", None))),
    # System.
    ("GET", "/health"): ("open/admin", open_route("/health")),
    ("GET", "/health/ready"): ("open/admin", open_route("/health/ready", (200, 503))),
    ("GET", "/metrics"): ("open/admin", open_route("/metrics")),
    # Ember's surface: features of the model and inline controllers, nothing stored.
    ("GET", "/api/inference/v1/features/search"): ("create/stateless", stateless(
        ("GET", "/api/inference/v1/features/search", {"params": {"query": "pirate"}}))),
    ("POST", "/api/inference/v1/features/rerank"): ("create/stateless", stateless(
        ("POST", "/api/inference/v1/features/rerank", {"query": "pirate", "feature_ids": []}))),
    ("GET", "/api/inference/v1/features/"): ("create/stateless", stateless(
        ("GET", "/api/inference/v1/features/", None))),
    ("POST", "/api/inference/v1/features/lookup"): ("create/stateless", stateless(
        ("POST", "/api/inference/v1/features/lookup", {"indices": [0]}))),
    ("POST", "/api/inference/v1/features/auto-edits"): ("create/stateless", stateless(
        ("POST", "/api/inference/v1/features/auto-edits", {"specification": "pirate"}))),
    ("POST", "/api/inference/v1/attributions/neighbors"): ("create/stateless", stateless(
        ("POST", "/api/inference/v1/attributions/neighbors",
         {"feature_indices": [0], "top_k": 2}))),
    ("POST", "/api/inference/v1/chat-attribution/compute-features"): ("create/stateless",
        stateless(("POST", "/api/inference/v1/chat-attribution/compute-features",
                   {"messages": EMBER_MSG}))),
    ("POST", "/api/inference/v1/chat-attribution/contrast"): ("create/stateless", stateless(
        ("POST", "/api/inference/v1/chat-attribution/contrast",
         {"dataset_1": [EMBER_MSG], "dataset_2": [EMBER_MSG], "k_to_add": 1,
          "k_to_remove": 1}))),
    ("POST", "/api/inference/v1/chat-attribution/compute-logits"): ("create/stateless",
        stateless(("POST", "/api/inference/v1/chat-attribution/compute-logits",
                   {"messages": EMBER_MSG, "top_k": 2}))),
    ("POST", "/api/inference/v1/chat/tokenize"): ("create/stateless", stateless(
        ("POST", "/api/inference/v1/chat/tokenize", {"messages": EMBER_MSG}),
        same_for_both=True)),
    ("POST", "/api/inference/v1/chat/completions"): ("create/stateless", stateless(
        ("POST", "/api/inference/v1/chat/completions",
         {"messages": EMBER_MSG, "max_completion_tokens": 1}))),
    # Tasks: text in, answer out.
    ("POST", "/tasks/classify"): ("create/stateless", stateless(
        ("POST", "/tasks/classify", {"text": "I love it", "labels": ["good", "bad"]}))),
    ("POST", "/tasks/extract"): ("create/stateless", stateless(
        ("POST", "/tasks/extract", {"text": "Ann met Bo.", "entity_types": [{"name": "p"}]}))),
    # (its instructions outgrow the tiny model's 512 tokens: a 400, the key still accepted)
    ("POST", "/tasks/answer"): ("create/stateless", stateless(
        ("POST", "/tasks/answer", {"question": "Who?", "passages": ["Ann did."]}), 400)),
    ("POST", "/tasks/summarize"): ("create/stateless", stateless(
        ("POST", "/tasks/summarize", {"text": "One. Two. Three.", "max_sentences": 1}))),
    # Chat sessions.
    ("POST", "/llm/chat/"): ("owned", owned(
        ("POST", "/llm/chat/", {"user_id": "{user_id}", "initial_message": "hi", "max_tokens": 1,
                                "variant_namespace": "{ns}", "variant_id": "{variant}"}))),
    ("GET", "/llm/chat/sessions/"): ("list", listed(
        ("GET", "/llm/chat/sessions/", None),
        ("GET", "/llm/chat/sessions/", {"params": {"user_id": "{user_id}"}}))),
    ("POST", "/llm/chat/{session_id}/message/"): ("owned", owned(
        ("POST", "/llm/chat/{session}/message/", {"user_message": "x"}),
        ("POST", "/llm/chat/{session}/message/", {"user_message": "x", "stream": True}))),
    ("GET", "/llm/chat/{session_id}/history/"): ("owned", owned(
        ("GET", "/llm/chat/{session}/history/", None))),
    ("DELETE", "/llm/chat/{session_id}/"): ("owned", owned(
        ("DELETE", "/llm/chat/{session}/", None))),
    # Embeddings, their cache, jobs.
    ("POST", "/v1/embeddings"): ("create/stateless", stateless(
        ("POST", "/v1/embeddings", {"input": SECRET[:20]}))),
    # The cache is every tenant's (keyed by text): admin keys only (api/embeddings/routes.py).
    ("GET", "/v1/embeddings/cache"): ("open/admin", both(
        _user_forbidden(("GET", "/v1/embeddings/cache", None)),
        lambda w: _ok(w.beta.admin.get("/v1/embeddings/cache")))),
    ("DELETE", "/v1/embeddings/cache"): ("open/admin",
                                         _user_forbidden(("DELETE", "/v1/embeddings/cache", None))),
    ("POST", "/api/v1/embeddings/jobs"): ("create/stateless", create_job),
    ("GET", "/api/v1/embeddings/jobs"): ("list", listed(
        ("GET", "/api/v1/embeddings/jobs", None),
        ("GET", "/api/v1/embeddings/jobs", {"params": {"user_id": "{user_id}"}}))),
    ("GET", "/api/v1/embeddings/jobs/{job_id}"): ("owned", owned(
        ("GET", "/api/v1/embeddings/jobs/{job}", None))),
    ("DELETE", "/api/v1/embeddings/jobs/{job_id}"): ("owned", owned(
        ("DELETE", "/api/v1/embeddings/jobs/{job}", None))),
    # Files and vector stores.
    ("POST", "/v1/files"): ("create/stateless", create_file),
    ("GET", "/v1/files"): ("list", listed(("GET", "/v1/files", None))),
    ("GET", "/v1/files/{file_id}"): ("owned", owned(("GET", "/v1/files/{file}", None))),
    ("DELETE", "/v1/files/{file_id}"): ("owned", owned(("DELETE", "/v1/files/{file}", None))),
    ("GET", "/v1/files/{file_id}/content"): ("owned", owned(
        ("GET", "/v1/files/{file}/content", None))),
    ("POST", VS): ("owned", owned(("POST", VS, {"name": "x", "file_ids": ["{file}"]}))),
    ("GET", VS): ("list", listed(("GET", VS, {"params": {"limit": 100}}))),
    ("GET", VS + "/{vector_store_id}"): ("owned", owned(("GET", VS + "/{store}", None))),
    ("POST", VS + "/{vector_store_id}"): ("owned", owned(
        ("POST", VS + "/{store}", {"name": "stolen"}))),
    ("DELETE", VS + "/{vector_store_id}"): ("owned", owned(("DELETE", VS + "/{store}", None))),
    ("POST", VS + "/{vector_store_id}/search"): ("owned", both(
        owned(("POST", VS + "/{store}/search", {"query": "volcano"})), search_own_store)),
    ("POST", VS + "/{vector_store_id}/files"): ("owned", owned(
        ("POST", VS + "/{store}/files", {"file_id": "{b_file}"}),
        ("POST", VS + "/{b_store}/files", {"file_id": "{file}"}))),
    ("GET", VS + "/{vector_store_id}/files"): ("owned", owned(
        ("GET", VS + "/{store}/files", None))),
    ("GET", VS + "/{vector_store_id}/files/{file_id}"): ("owned", owned(
        ("GET", VS + "/{store}/files/{file}", None),
        ("GET", VS + "/{b_store}/files/{file}", None))),
    ("POST", VS + "/{vector_store_id}/files/{file_id}"): ("owned", owned(
        ("POST", VS + "/{store}/files/{file}", {"attributes": {"x": "y"}}),
        ("POST", VS + "/{b_store}/files/{file}", {"attributes": {"x": "y"}}))),
    ("DELETE", VS + "/{vector_store_id}/files/{file_id}"): ("owned", owned(
        ("DELETE", VS + "/{store}/files/{file}", None),
        ("DELETE", VS + "/{b_store}/files/{file}", None))),
    ("GET", VS + "/{vector_store_id}/files/{file_id}/content"): ("owned", owned(
        ("GET", VS + "/{store}/files/{file}/content", None),
        ("GET", VS + "/{b_store}/files/{file}/content", None))),
    # Admin.
    ("GET", "/admin/keys"): ("open/admin", admin_list),
    ("POST", "/admin/keys"): ("open/admin", admin_create),
    ("PATCH", "/admin/keys/{key_id}"): ("open/admin", admin_update),
    ("DELETE", "/admin/keys/{key_id}"): ("open/admin", admin_revoke),
}  # fmt: skip
KINDS = ("owned", "list", "create/stateless", "open/admin")


def _schema_routes(server: LiveServer) -> list[tuple[str, str]]:
    paths = server.app.openapi()["paths"]
    return [(m.upper(), p) for p, methods in paths.items() for m in methods]


def test_every_route_of_the_schema_has_a_tenant_case(server: LiveServer) -> None:
    routes = _schema_routes(server)
    missing = [f"{m} {p}" for m, p in routes if (m, p) not in TABLE]
    assert not missing, (
        "routes without a tenant case in tests/integration/auth/test_tenant_walk.py TABLE "
        "(say what another tenant's id does there): " + ", ".join(missing)
    )
    stale = [f"{m} {p}" for m, p in TABLE if (m, p) not in set(routes)]
    assert not stale, "TABLE rows for routes the schema no longer has: " + ", ".join(stale)
    assert {kind for kind, _ in TABLE.values()} <= set(KINDS)


def test_two_tenants_walk_every_route(world: World) -> None:
    failures = []
    for method, path in _schema_routes(world.server):
        if (method, path) not in TABLE:
            continue  # the test above names it
        kind, check = TABLE[(method, path)]
        try:
            check(world)
        except Exception as exc:  # every route's failure in one run, not the first one's
            failures.append(f"[{kind}] {method} {path}: {type(exc).__name__}: {exc}")
    assert not failures, f"{len(failures)} route(s) leak across tenants:\n" + "\n".join(failures)
    # At the end of the walk A's objects are all there, as they were.
    assert _snapshot(world) == world.snapshot
