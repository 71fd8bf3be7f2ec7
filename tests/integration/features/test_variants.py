"""/variants CRUD against a live server, and persistence of stored variants in SQLite."""

from __future__ import annotations

import uuid

import httpx
import pytest
from helpers.http import new_namespace, nudge_variant
from helpers.server import TINY_NAME, LiveServer, running, tiny_settings

from glassbox.features.variant import FeatureRef, VariantSpec
from glassbox.features.variants import VariantService
from glassbox.principal import LOCAL
from glassbox.store import Database


@pytest.fixture(scope="module")
def feature(tiny_server: LiveServer) -> dict:
    """A real concept feature of the tiny model, as /features/search reports it."""
    with httpx.Client(base_url=tiny_server.base_url, timeout=120) as c:
        r = c.post("/features/search", json={"query": "pirate", "session_id": "fixture"})
    assert r.status_code == 200, r.text
    return r.json()[0]


def edit_values(variant_object: dict) -> dict[str, float]:
    return {e["feature_id"]: e["value"] for e in variant_object["variant"]["edits"]}


def test_default_variant_exists_on_first_use(http) -> None:
    s = new_namespace()
    r = http.get(f"/variants/{s}/default")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "variant" and body["variant_id"] == "default"
    assert body["variant"] == {"base_model": TINY_NAME, "edits": [], "scopes": []}
    listed = http.get("/variants", params={"session_id": new_namespace()}).json()
    assert [v["variant_id"] for v in listed["data"]] == ["default"]


def test_crud_round_trip(http, feature) -> None:
    s = new_namespace()
    created = http.post(
        "/variants",
        json={"session_id": s, "variant_id": "pirate", "variant": nudge_variant(feature, 0.5)},
    )
    assert created.status_code == 201, created.text
    assert edit_values(created.json()) == {feature["uuid"]: 0.5}
    assert created.json()["variant"]["edits"][0]["feature_label"] == feature["label"]

    got = http.get(f"/variants/{s}/pirate").json()
    assert got["variant"] == created.json()["variant"]
    listed = http.get("/variants", params={"session_id": s}).json()["data"]
    assert [v["variant_id"] for v in listed] == ["default", "pirate"]

    replaced = http.put(f"/variants/{s}/pirate", json={"variant": nudge_variant(feature, -0.25)})
    assert replaced.status_code == 200, replaced.text
    assert edit_values(replaced.json()) == {feature["uuid"]: -0.25}
    assert edit_values(http.get(f"/variants/{s}/pirate").json()) == {feature["uuid"]: -0.25}

    deleted = http.delete(f"/variants/{s}/pirate")
    assert deleted.json() == {
        "object": "variant.deleted",
        "session_id": s,
        "variant_id": "pirate",
        "deleted": True,
    }
    missing = http.get(f"/variants/{s}/pirate")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "variant_not_found"


def test_create_from_base_copies_edits_and_stays_independent(http, feature) -> None:
    s = new_namespace()
    http.put(f"/variants/{s}/default", json={"variant": nudge_variant(feature, 0.3)})
    r = http.post(
        "/variants", json={"session_id": s, "variant_id": "b", "base_variant_id": "default"}
    )
    assert r.status_code == 201, r.text
    assert r.json()["parent_variant_id"] == "default"
    assert edit_values(r.json()) == {feature["uuid"]: 0.3}
    http.put(f"/variants/{s}/b", json={"variant": nudge_variant(feature, 0.9)})
    assert edit_values(http.get(f"/variants/{s}/default").json()) == {feature["uuid"]: 0.3}


def test_deleting_the_default_resets_it(http, feature) -> None:
    s = new_namespace()
    http.put(f"/variants/{s}/default", json={"variant": nudge_variant(feature, 0.3)})
    assert http.delete(f"/variants/{s}/default").status_code == 200
    assert http.get(f"/variants/{s}/default").json()["variant"]["edits"] == []


def error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


def test_variant_errors(http, feature) -> None:
    s = new_namespace()
    http.post("/variants", json={"session_id": s, "variant_id": "v"})
    dup = error(http.post("/variants", json={"session_id": s, "variant_id": "v"}), 409)
    assert dup["code"] == "variant_exists" and dup["param"] == "variant_id"

    no_base = {"session_id": s, "variant_id": "w", "base_variant_id": "nope"}
    assert error(http.post("/variants", json=no_base), 404)["param"] == "base_variant_id"
    assert error(http.get(f"/variants/{s}/nope"), 404)["code"] == "variant_not_found"
    assert error(http.delete(f"/variants/{s}/nope"), 404)["code"] == "variant_not_found"
    put_missing = http.put(f"/variants/{s}/nope", json={"variant": nudge_variant(feature, 1)})
    assert error(put_missing, 404)["code"] == "variant_not_found"

    bad_id = error(http.post("/variants", json={"session_id": "a b", "variant_id": "v"}), 400)
    assert bad_id["param"] == "session_id"
    too_long = {"session_id": s, "variant_id": "x" * 129}
    assert error(http.post("/variants", json=too_long), 400)["param"] == "variant_id"
    assert error(http.get("/variants", params={"session_id": "é"}), 400)["param"] == "session_id"

    both = {
        "session_id": s,
        "variant_id": "z",
        "base_variant_id": "v",
        "variant": nudge_variant(feature, 1),
    }
    assert error(http.post("/variants", json=both), 400)["param"] == "base_variant_id"

    unknown = dict(feature, uuid=str(uuid.UUID(int=7)))
    body = {"session_id": s, "variant_id": "u", "variant": nudge_variant(unknown, 0.5)}
    assert error(http.post("/variants", json=body), 404)["code"] == "feature_not_found"
    other_model = {
        "session_id": s,
        "variant_id": "u",
        "variant": nudge_variant(feature, 0.5, base_model="someone/else"),
    }
    assert error(http.post("/variants", json=other_model), 404)["code"] == "model_not_found"
    malformed = {"session_id": s, "variant_id": "u", "variant": {"edits": []}}
    assert error(http.post("/variants", json=malformed), 400)["param"] == "variant"
    # nothing was stored by the failed requests
    listed = http.get("/variants", params={"session_id": s}).json()["data"]
    assert [v["variant_id"] for v in listed] == ["default", "v"]


def test_variants_survive_a_restart(tiny_model_dir, tmp_path) -> None:
    """A server stopped (engine and app shut down) and started again on the same cache
    directory and database serves the variants the first one stored."""
    settings = tiny_settings(tiny_model_dir, tmp_path)
    s = new_namespace()
    with running(settings) as first, httpx.Client(base_url=first.base_url, timeout=120) as http:
        r = http.post("/features/search", json={"query": "pirate", "session_id": s})
        assert r.status_code == 200, r.text
        feature = r.json()[0]
        body = {"session_id": s, "variant_id": "kept", "variant": nudge_variant(feature, 0.4)}
        assert http.post("/variants", json=body).status_code == 201
        r = http.put(f"/variants/{s}/default", json={"variant": nudge_variant(feature, -0.2)})
        assert r.status_code == 200, r.text
        stored = {v: http.get(f"/variants/{s}/{v}").json() for v in ("default", "kept")}
    assert not first.engine.is_alive  # the first server is gone
    with running(settings) as second, httpx.Client(base_url=second.base_url, timeout=30) as http:
        listed = http.get("/variants", params={"session_id": s}).json()["data"]
        assert [v["variant_id"] for v in listed] == ["default", "kept"]
        for variant_id, before in stored.items():
            r = http.get(f"/variants/{s}/{variant_id}")
            assert r.status_code == 200, r.text
            assert r.json()["variant"] == before["variant"]
        assert edit_values(http.get(f"/variants/{s}/kept").json()) == {feature["uuid"]: 0.4}
        assert edit_values(http.get(f"/variants/{s}/default").json()) == {feature["uuid"]: -0.2}


def test_variant_service_persists_in_sqlite(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'variants.db'}"
    ref = FeatureRef(uuid="ab" * 16, label="Pirate speech", index_in_sae=3)
    first = VariantService(Database(url), "m")
    first.set_edit(LOCAL, "s", "default", ref, 0.5, "pin")
    first.create(LOCAL, "s", "copy", base_variant_id="default")
    first.set_edit(LOCAL, "s", "copy", ref, None, "nudge")  # None clears

    second = VariantService(Database(url), "m")
    [edit] = second.modified(LOCAL, "s", "default")
    assert (edit.feature, edit.mode, edit.value) == (ref, "pin", 0.5)
    assert second.get(LOCAL, "s", "copy").spec == VariantSpec(base_model="m")
    assert second.get(LOCAL, "s", "copy").parent_variant_id == "default"
    assert [v.variant_id for v in second.list(LOCAL, "s")] == ["default", "copy"]
