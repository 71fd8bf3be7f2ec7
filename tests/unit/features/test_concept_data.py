"""The shipped concept dataset (contrast sets for DiffMean concept vectors) is well formed."""

import importlib.resources
import json
import re

import pytest

CATEGORIES = {"style", "tone", "emotion", "topic", "language", "format", "persona"}
REQUIRED_EMOTIONS = {"excited", "calm", "frustrated", "depleted"}


@pytest.fixture(scope="module")
def data() -> dict:
    path = importlib.resources.files("glassbox.features") / "data" / "concepts.json"
    return json.loads(path.read_text(encoding="utf-8"))


def test_top_level(data):
    assert data["version"] == 1
    assert len(data["neutral"]) >= 50
    assert all(isinstance(s, str) and s.strip() for s in data["neutral"])
    assert len(set(data["neutral"])) == len(data["neutral"])
    assert len(data["concepts"]) >= 200


def test_ids_and_labels_unique(data):
    ids = [c["id"] for c in data["concepts"]]
    labels = [c["label"].lower() for c in data["concepts"]]
    assert len(set(ids)) == len(ids)
    assert len(set(labels)) == len(labels)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", i) for i in ids)


def test_required_emotions_and_categories(data):
    by_id = {c["id"]: c for c in data["concepts"]}
    for cid in REQUIRED_EMOTIONS:
        assert cid in by_id and by_id[cid]["category"] == "emotion"
    assert {c["category"] for c in data["concepts"]} == CATEGORIES


def test_concept_shape(data):
    for c in data["concepts"]:
        assert set(c) == {
            "id",
            "label",
            "category",
            "description",
            "examples",
            "queries",
            "split",
        }, c["id"]
        assert c["label"].strip() and c["description"].strip(), c["id"]
        assert len(c["examples"]) == 8, c["id"]
        assert len(set(c["examples"])) == 8, c["id"]
        assert all(isinstance(e, str) and e.strip() for e in c["examples"]), c["id"]
        assert len(c["queries"]) == 3, c["id"]
        assert all(q.strip() and q.lower() != c["label"].lower() for q in c["queries"]), c["id"]
        assert c["split"] in {"train", "heldout"}, c["id"]


def test_heldout_split(data):
    heldout = [c for c in data["concepts"] if c["split"] == "heldout"]
    assert len(heldout) >= 30
    # spread across categories, not concentrated in one
    assert len({c["category"] for c in heldout}) >= 5
