"""/tasks routes: the answers of the real bundled model (slow) are well formed and valid, and
bad input is a 400 that names the field (on the tiny model)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import httpx
import pytest
from helpers.live_server import serve_in_thread

from glassbox.app import create_app
from glassbox.config import Settings
from glassbox.runtime import resolve
from glassbox.structured.tasks import NOT_IN_CONTEXT, split_sentences

LABELS = ["sport", "food", "tech", "weather"]
PEOPLE = 'Marie Curie moved from "Warsaw" to Paris in 1891.\nShe later worked with Pierre Curie.'
PASSAGES = [
    "The Eiffel Tower is in Paris and was completed in 1889.",
    "Mount Everest is the highest mountain on Earth, at 8,849 metres.",
    "The Great Wall of China is over 20,000 kilometres long.",
]
PARK = (
    "The city council met on Monday to discuss the new park. Residents asked for more trees "
    "and a playground. The mayor said the budget allows for both, but work cannot start "
    "until spring. Some council members worried about the cost of maintenance of the park. "
    "A final vote on the park is planned for next month."
)


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    resolve(Settings(model="bundled"))  # converts the bundled GGUF into the cache once
    settings = Settings(
        model="bundled",
        database_url=f"sqlite:///{tmp_path_factory.mktemp('tasks') / 'db.sqlite'}",
        warm_features=False,
    )
    with (
        serve_in_thread(create_app(settings), startup_timeout=600) as url,
        httpx.Client(base_url=url, timeout=300) as http,
    ):
        yield http


def _ok(r: httpx.Response) -> dict:
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.slow
def test_classify_single_label(bundled: httpx.Client) -> None:
    text = "The striker scored twice and his team won the cup final."
    body = _ok(bundled.post("/tasks/classify", json={"text": text, "labels": LABELS}))
    scores = body["scores"]
    assert sorted(s["label"] for s in scores) == sorted(LABELS)
    assert math.isclose(sum(s["score"] for s in scores), 1.0, abs_tol=1e-6)
    assert [s["score"] for s in scores] == sorted((s["score"] for s in scores), reverse=True)
    assert body["label"] == scores[0]["label"] == "sport" and body["labels"] == ["sport"]


@pytest.mark.slow
def test_classify_multi_label(bundled: httpx.Client) -> None:
    req = {
        "text": "Heavy rain stopped the football match.",
        "labels": LABELS,
        "multi_label": True,
        "threshold": 0.6,
    }
    body = _ok(bundled.post("/tasks/classify", json=req))
    scores = {s["label"]: s["score"] for s in body["scores"]}
    assert set(scores) == set(LABELS) and all(0.0 <= s <= 1.0 for s in scores.values())
    assert body["labels"] == [s["label"] for s in body["scores"] if s["score"] >= 0.6]
    assert {"sport", "weather"} <= set(body["labels"])
    assert body["label"] in {"sport", "weather"}


@pytest.mark.slow
def test_extract_gives_entities_whose_offsets_match_the_text(bundled: httpx.Client) -> None:
    types = [
        {"name": "person", "description": "a person's name"},
        {"name": "location", "description": "a city or country"},
    ]
    body = _ok(bundled.post("/tasks/extract", json={"text": PEOPLE, "entity_types": types}))
    entities = body["entities"]
    assert entities
    for e in entities:
        assert e["type"] in {"person", "location"}
        assert PEOPLE[e["start"] : e["end"]] == e["text"]
    assert [e["start"] for e in entities] == sorted(e["start"] for e in entities)
    assert {"type": "person", "text": "Marie Curie", "start": 0, "end": 11} in entities


@pytest.mark.slow
def test_answer_cites_valid_passages_or_says_not_in_the_context(bundled: httpx.Client) -> None:
    for question in ["How tall is Mount Everest?", "When was the Eiffel Tower completed?"]:
        body = _ok(bundled.post("/tasks/answer", json={"question": question, "passages": PASSAGES}))
        assert body["answer"]
        assert body["citations"] == sorted(set(body["citations"]))
        assert all(0 <= i < len(PASSAGES) for i in body["citations"])
        assert (body["answer"] == NOT_IN_CONTEXT) == (body["citations"] == [])
    unrelated = {"question": "Who wrote Hamlet?", "passages": PASSAGES}
    body = _ok(bundled.post("/tasks/answer", json=unrelated))
    assert body == {"answer": NOT_IN_CONTEXT, "citations": []}


@pytest.mark.slow
def test_extractive_summary_takes_sentences_of_the_text(bundled: httpx.Client) -> None:
    req = {"text": PARK, "max_sentences": 2, "focus": ["budget"]}
    body = _ok(bundled.post("/tasks/summarize", json=req))
    assert body["mode"] == "extractive" and len(body["sentences"]) == 2
    originals = {(s.text, s.start, s.end) for s in split_sentences(PARK)}
    for s in body["sentences"]:
        assert (s["text"], s["start"], s["end"]) in originals
    assert [s["start"] for s in body["sentences"]] == sorted(s["start"] for s in body["sentences"])
    assert "budget" in body["summary"]
    assert body["summary"] == " ".join(s["text"] for s in body["sentences"])


@pytest.mark.slow
def test_abstractive_summary_respects_max_words(bundled: httpx.Client) -> None:
    req = {"text": PARK, "max_words": 20, "mode": "abstractive"}
    body = _ok(bundled.post("/tasks/summarize", json=req))
    assert body["mode"] == "abstractive" and body["sentences"] == []
    assert body["finish_reason"] == "stop"
    assert 1 <= len(body["summary"].split()) <= 20
    assert body["summary"][-1] in ".!?"


@pytest.mark.parametrize(
    ("route", "body", "param", "words"),
    [
        ("classify", {"text": "a text", "labels": []}, "labels", "empty"),
        ("classify", {"text": "a text", "labels": ["a", "A"]}, "labels", "same label"),
        ("classify", {"text": " ", "labels": ["a", "b"]}, "text", "empty"),
        ("classify", {"text": "a", "labels": ["a", "b"], "threshold": 2}, "threshold", "1"),
        ("classify", {"text": "a", "labels": ["a", "b"], "label": "a"}, "label", "remove"),
        ("extract", {"text": "a text", "entity_types": []}, "entity_types", "empty"),
        ("extract", {"text": "", "entity_types": [{"name": "x"}]}, "text", "empty"),
        ("answer", {"question": "Who?", "passages": []}, "passages", "empty"),
        ("answer", {"question": "", "passages": ["a"]}, "question", "empty"),
        ("summarize", {"text": ""}, "text", "empty"),
        ("summarize", {"text": "a.", "max_words": 0}, "max_words", "1"),
        ("summarize", {"text": "a.", "mode": "poem"}, "mode", "extractive"),
        ("classify", {"text": "word " * 1000, "labels": ["a", "b"]}, "text", "Shorten"),
        ("answer", {"question": "Who?", "passages": ["word " * 1000]}, "passages", "Shorten"),
        ("summarize", {"text": "word " * 1000, "mode": "abstractive"}, "text", "Shorten"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    http: httpx.Client, route: str, body: dict, param: str, words: str
) -> None:
    r = http.post(f"/tasks/{route}", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"], error
