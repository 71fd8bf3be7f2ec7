"""/features/search, /inspect, /steer and /modified within a session's variants, and steered
/v1/chat/completions and /v1/completions, on the tiny model's concept vectors."""

from __future__ import annotations

import json
import uuid

import httpx
import openai
import pytest
from helpers.http import new_namespace, nudge_variant
from helpers.server import TINY_NAME, LiveServer

from glassbox.features.ember_json import feature_hex, variant_to_ember
from glassbox.features.variant import (
    Condition,
    ConditionGroup,
    FeatureRef,
    Scope,
    VariantSpec,
)

MESSAGES = [{"role": "user", "content": "Tell me about your day."}]
GREEDY = {"temperature": 0.0, "max_tokens": 12, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def hits(tiny_server: LiveServer) -> list[dict]:
    with httpx.Client(base_url=tiny_server.base_url, timeout=120) as c:
        r = c.post("/features/search", json={"query": "talk like a pirate", "session_id": "x"})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def feature(hits: list[dict]) -> dict:
    return hits[0]


def test_search_shape_and_relevance_order(hits: list[dict]) -> None:
    assert len(hits) == 20  # top_k defaults to 20
    assert set(hits[0]) == {"uuid", "label", "index_in_sae", "score", "activation"}
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert len({h["uuid"] for h in hits}) == 20
    assert all(h["activation"] == 0.0 for h in hits)


def test_search_activation_reflects_the_variant(http, hits) -> None:
    s = new_namespace()
    target = hits[1]
    r = http.post(
        "/features/steer", json={"session_id": s, "feature_id": target["uuid"], "value": 0.6}
    )
    assert r.status_code == 200, r.text
    found = http.post(
        "/features/search", json={"query": "talk like a pirate", "session_id": s, "top_k": 5}
    ).json()
    assert len(found) == 5
    values = {h["uuid"]: h["activation"] for h in found}
    assert values[target["uuid"]] == pytest.approx(0.6)
    assert all(v == 0.0 for u, v in values.items() if u != target["uuid"])
    # another variant of the same session is untouched
    http.post("/variants", json={"session_id": s, "variant_id": "plain"})
    plain = http.post(
        "/features/search",
        json={"query": "talk like a pirate", "session_id": s, "variant_id": "plain", "top_k": 5},
    ).json()
    assert all(h["activation"] == 0.0 for h in plain)


def test_search_errors(http) -> None:
    r = http.post("/features/search", json={"query": "x", "session_id": "s", "variant_id": "no"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "variant_not_found"
    r = http.post("/features/search", json={"query": "", "session_id": "s"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "query"


def test_steer_by_label_then_modified(http, feature) -> None:
    s = new_namespace()
    r = http.post(
        "/features/steer", json={"session_id": s, "label": feature["label"], "value": 0.7}
    )
    assert r.status_code == 200, r.text
    [edit] = r.json()["variant"]["edits"]
    assert edit["feature_id"] == feature["uuid"] and edit["value"] == 0.7
    assert edit["feature_label"] == feature["label"]

    modified = http.get("/features/modified", params={"session_id": s}).json()
    assert modified["variant_id"] == "default"
    assert [(e["feature_id"], e["value"]) for e in modified["edits"]] == [(feature["uuid"], 0.7)]

    pinned = http.post(
        "/features/steer",
        json={"session_id": s, "feature_id": feature["uuid"], "value": 0.2, "mode": "pin"},
    )
    [edit] = pinned.json()["variant"]["edits"]
    assert (edit["value"], edit["mode"]) == (0.2, "pin")

    cleared = http.post(
        "/features/steer", json={"session_id": s, "label": feature["label"], "mode": "clear"}
    )
    assert cleared.json()["variant"]["edits"] == []
    assert http.get("/features/modified", params={"session_id": s}).json()["edits"] == []


def test_steer_errors(http, feature) -> None:
    s = new_namespace()
    unknown = http.post(
        "/features/steer", json={"session_id": s, "feature_id": str(uuid.UUID(int=1)), "value": 1}
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "feature_not_found"
    both = http.post(
        "/features/steer",
        json={"session_id": s, "label": "a", "feature_id": feature["uuid"], "value": 1},
    )
    assert both.status_code == 400
    not_uuid = http.post(
        "/features/steer", json={"session_id": s, "feature_id": "nope", "value": 1}
    )
    assert not_uuid.status_code == 400 and not_uuid.json()["error"]["param"] == "feature_id"
    missing = http.get("/features/modified", params={"session_id": s, "variant_id": "nope"})
    assert missing.status_code == 404


def test_inspect_tokens_and_features(http) -> None:
    body = {"messages": MESSAGES, "session_id": new_namespace(), "top_k": 5}
    r = http.post("/features/inspect", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert "matrix" not in out
    # the messages' own tokens, in order: not the chat template's markers
    assert "".join(out["tokens"]) == MESSAGES[0]["content"]
    template = http.post("/tokenize", json={"messages": MESSAGES, "add_generation_prompt": False})
    ids = template.json()["tokens"]
    assert len(out["token_ids"]) < len(ids) - 1
    assert all(t not in out["tokens"] for t in ("<|im_start|>", "<|im_end|>"))
    assert len(out["tokens"]) == len(out["token_ids"])
    assert len(out["features"]) == 5
    assert set(out["features"][0]) == {"uuid", "label", "index_in_sae", "activation"}
    counts = [f["activation"] for f in out["features"]]
    assert counts == sorted(counts, reverse=True)  # frequency: tokens where it fires

    with_matrix = http.post(
        "/features/inspect", json=body | {"include_matrix": True, "aggregate_by": "max"}
    ).json()
    matrix = with_matrix["matrix"]
    assert len(matrix) == len(out["tokens"]) and all(len(row) == 5 for row in matrix)
    maxima = [f["activation"] for f in with_matrix["features"]]
    assert maxima == pytest.approx([max(col) for col in zip(*matrix, strict=True)], abs=1e-5)

    bad = http.post("/features/inspect", json=body | {"aggregate_by": "median"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "aggregate_by"


def test_inspect_sees_the_variant(http, feature) -> None:
    """A nudged feature reads higher under the variant (activations are read after the
    layer's edits)."""
    s = new_namespace()
    body = {"messages": MESSAGES, "session_id": s, "top_k": 1, "aggregate_by": "mean"}
    before = http.post("/features/inspect", json=body).json()
    http.post(
        "/features/steer", json={"session_id": s, "feature_id": feature["uuid"], "value": 8.0}
    )
    after = http.post("/features/inspect", json=body).json()
    assert after["features"][0]["uuid"] == feature["uuid"]
    assert after["features"][0]["activation"] > before["features"][0]["activation"]


# --- steered generation ---------------------------------------------------------------------


def chat(client: openai.OpenAI, **extra) -> str:
    kwargs = dict(GREEDY)
    kwargs["extra_body"] = {**GREEDY["extra_body"], **extra}
    r = client.chat.completions.create(model=TINY_NAME, messages=MESSAGES, **kwargs)
    return r.choices[0].message.content


def chat_tokens(client: openai.OpenAI, **extra) -> list[tuple[str, float]]:
    """The generated tokens with their logprobs: the tiny random model's text often decodes
    to nothing (lone bytes of multi-byte characters), so compare what it computed."""
    kwargs = dict(GREEDY)
    kwargs["extra_body"] = {**GREEDY["extra_body"], **extra}
    r = client.chat.completions.create(model=TINY_NAME, messages=MESSAGES, logprobs=True, **kwargs)
    return [(t.token, round(t.logprob, 4)) for t in r.choices[0].logprobs.content]


def test_inline_variant_steers_and_empty_variant_does_not(client, feature) -> None:
    plain = chat_tokens(client)
    steered = chat_tokens(client, variant=nudge_variant(feature, 4.0))
    assert steered != plain
    assert (
        chat_tokens(client, variant={"base_model": TINY_NAME, "edits": [], "scopes": []}) == plain
    )
    assert chat_tokens(client, variant=nudge_variant(feature, 4.0)) == steered  # deterministic


def test_stored_variant_by_session(client, http, feature) -> None:
    s = new_namespace()
    http.post(
        "/variants",
        json={"session_id": s, "variant_id": "loud", "variant": nudge_variant(feature, 4.0)},
    )
    steered = chat_tokens(client, variant=nudge_variant(feature, 4.0))
    assert chat_tokens(client, session_id=s, variant_id="loud") == steered
    assert chat_tokens(client, session_id=s) == chat_tokens(
        client
    )  # the session's default is empty
    http.post(
        "/features/steer", json={"session_id": s, "feature_id": feature["uuid"], "value": 4.0}
    )
    assert chat_tokens(client, session_id=s) == steered


def test_steered_stream_and_completions(client, feature) -> None:
    steered = chat(client, variant=nudge_variant(feature, 4.0))
    chunks = client.chat.completions.create(
        model=TINY_NAME,
        messages=MESSAGES,
        stream=True,
        temperature=0.0,
        max_tokens=12,
        extra_body={"ignore_eos": True, "variant": nudge_variant(feature, 4.0)},
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == steered

    def complete(**extra) -> list[str]:
        r = client.completions.create(
            model=TINY_NAME,
            prompt="Once upon a time",
            n=2,
            temperature=0.0,
            max_tokens=10,
            extra_body={"ignore_eos": True, **extra},
        )
        return [c.text for c in r.choices]

    plain, nudged = complete(), complete(variant=nudge_variant(feature, 4.0))
    assert nudged[0] == nudged[1]  # every choice carries the plan
    assert nudged[0] != plain[0]


def test_steering_request_errors(client, feature) -> None:
    unknown = dict(feature, uuid=str(uuid.UUID(int=3)))
    with pytest.raises(openai.NotFoundError) as exc:
        chat(client, variant=nudge_variant(unknown, 1.0))
    assert exc.value.body["code"] == "feature_not_found"
    with pytest.raises(openai.BadRequestError):
        chat(client, variant=nudge_variant(feature, 1.0), session_id="s")
    with pytest.raises(openai.BadRequestError):
        chat(client, variant_id="v")
    with pytest.raises(openai.NotFoundError) as exc:
        chat(client, session_id=new_namespace(), variant_id="missing")
    assert exc.value.body["code"] == "variant_not_found"


def abort_variant(feature: dict) -> dict:
    """abort_when the feature's activation is above -1e6: true on the first token."""
    ref = FeatureRef(
        uuid=feature_hex(feature["uuid"]),
        label=feature["label"],
        index_in_sae=feature["index_in_sae"],
    )
    when = ConditionGroup(items=[Condition(feature=ref, operator=">", value=-1e6)])
    return variant_to_ember(
        VariantSpec(base_model=TINY_NAME, scopes=[Scope(when=when, abort=True)])
    )


def test_abort_when_is_an_error(client, http, feature) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as exc:
        chat(client, variant=abort_variant(feature))
    assert exc.value.status_code == 422
    assert exc.value.body["code"] == "inference_aborted"

    body = {
        "model": TINY_NAME,
        "messages": MESSAGES,
        "max_tokens": 8,
        "stream": True,
        "variant": abort_variant(feature),
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        events = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
    errors = [d["error"] for d in (json.loads(e) for e in events if e != "[DONE]") if "error" in d]
    assert [e["code"] for e in errors] == ["inference_aborted"]
    assert "[DONE]" not in events
