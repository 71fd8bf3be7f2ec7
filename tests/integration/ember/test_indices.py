"""Ember's `index_in_sae` is unique across every dictionary of a running server (each
dictionary gets an offset), and names the same feature in search, the features list and
lookup."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from helpers.server import TINY_NAME, running, tiny_settings
from safetensors.torch import save_file

from glassbox.features.concepts import load_concept_data

EMBER = "/api/inference/v1"
HIDDEN = 64  # the tiny model's hidden size
VECTORS = ["sailing", "whispering"]


def vector_folder(directory: Path) -> Path:
    directory.mkdir()
    for seed, label in enumerate(VECTORS):
        vector = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(seed))
        save_file({label: vector}, directory / f"{label}.safetensors")
    return directory


@pytest.fixture(scope="module")
def http(tiny_model_dir, tmp_path_factory) -> Iterator[httpx.Client]:
    """A server of its own with the concept vectors and one steering-vector folder."""
    tmp = tmp_path_factory.mktemp("ember-indices")
    settings = tiny_settings(tiny_model_dir, tmp / "cache").model_copy(
        update={"steering_vector_dirs": [vector_folder(tmp / "moods")]}
    )
    with running(settings) as server:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            yield client


def ok(r: httpx.Response) -> dict:
    assert r.status_code == 200, r.text
    return r.json()


def search(http: httpx.Client, query: str, per_page: int) -> list[dict]:
    params = {"query": query, "perPage": per_page, "model": TINY_NAME}
    return ok(http.get(f"{EMBER}/features/search", params=params))["features"]


def lookup(http: httpx.Client, indices: list[int]) -> list[dict]:
    body = {"indices": indices, "model": TINY_NAME}
    return ok(http.post(f"{EMBER}/features/lookup", json=body))["features"]


def listed(http: httpx.Client, ids: list[str]) -> list[dict]:
    params = [("feature_id", i) for i in ids] + [("model", TINY_NAME)]
    return ok(http.get(f"{EMBER}/features/", params=params))["features"]


def same(a: dict, b: dict) -> bool:
    return (a["id"], a["label"], a["index_in_sae"]) == (b["id"], b["label"], b["index_in_sae"])


def test_every_feature_has_its_own_index(http: httpx.Client) -> None:
    concepts = len(load_concept_data().concepts)
    total = concepts + len(VECTORS)
    found = search(http, "a feeling", 1000)
    assert len(found) == total  # every feature of both dictionaries
    indices = [f["index_in_sae"] for f in found]
    assert sorted(indices) == list(range(total))  # distinct, and model-wide
    assert len({f["id"] for f in found}) == total
    # The folder comes after the concept vectors: its features take the last indices.
    by_label = {f["label"]: f for f in found}
    assert [by_label[label]["index_in_sae"] for label in VECTORS] == [concepts, concepts + 1]


def test_lookup_by_index_returns_the_same_feature(http: httpx.Client) -> None:
    found = search(http, "a feeling", 1000)
    by_index = {f["index_in_sae"]: f for f in found}
    indices = sorted(by_index)
    got = lookup(http, indices)
    assert [f["index_in_sae"] for f in got] == indices
    for f in got:
        assert same(f, by_index[f["index_in_sae"]]) and f["uuid"] == f["id"]
    # Both dictionaries' first features: the same local index, different features.
    concepts = len(load_concept_data().concepts)
    first, folder_first = lookup(http, [0, concepts])
    assert first["id"] != folder_first["id"] and folder_first["label"] == VECTORS[0]


def test_the_features_list_and_search_agree_on_indices(http: httpx.Client) -> None:
    found = search(http, "a feeling", 1000)
    for start in range(0, len(found), 50):  # the SDK asks for at most 50 ids at a time
        chunk = found[start : start + 50]
        got = listed(http, [f["id"] for f in chunk])
        assert len(got) == len(chunk)
        for f, g in zip(chunk, got, strict=True):
            assert same(f, g)
    sailing = search(http, "sailing", 1)[0]
    assert sailing["label"] == "sailing"
    assert sailing["index_in_sae"] == len(load_concept_data().concepts)
    assert same(lookup(http, [sailing["index_in_sae"]])[0], sailing)


def test_an_index_past_the_last_feature_is_404(http: httpx.Client) -> None:
    total = len(load_concept_data().concepts) + len(VECTORS)
    r = http.post(f"{EMBER}/features/lookup", json={"indices": [total], "model": TINY_NAME})
    assert r.status_code == 404, r.text
    error = r.json()["error"]
    assert error["code"] == "feature_not_found" and error["param"] == "indices"
    assert f"this model's features are 0 to {total - 1}" in error["message"]


def test_glassbox_routes_and_stored_variants_use_the_same_indices(http: httpx.Client) -> None:
    """/features/search, /features/inspect and a variant steered with /features/steer report
    a feature by the same model-wide index as Ember."""
    ember = {f["label"]: f["index_in_sae"] for f in search(http, "a feeling", 1000)}
    hits = http.post(
        "/features/search", json={"query": "sailing", "session_id": "idx", "top_k": 1000}
    ).json()
    assert {h["label"]: h["index_in_sae"] for h in hits} == ember
    steered = http.post(
        "/features/steer", json={"session_id": "idx", "label": "sailing", "value": 0.5}
    )
    assert steered.status_code == 200, steered.text
    [edit] = steered.json()["variant"]["edits"]
    assert (edit["feature_label"], edit["index_in_sae"]) == ("sailing", ember["sailing"])
    inspected = http.post(
        "/features/inspect",
        json={"messages": [{"role": "user", "content": "Hoist the sails"}],
              "session_id": "idx", "top_k": 50},
    ).json()  # fmt: skip
    for f in inspected["features"]:
        assert f["index_in_sae"] == ember[f["label"]]
