"""Feature readout with a generation: `readout` on /v1/chat/completions, /v1/completions and
/generate/token returns every generated token's top features, streamed and not, equal to
what the features service's own inspection reads at the position the token was sampled
from."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import torch
from helpers.http import create_state
from helpers.server import TINY_NAME, LiveServer

from glassbox.features.ember_json import feature_id

MESSAGES = [{"role": "user", "content": "Tell me about your day."}]
GREEDY = {"temperature": 0.0, "max_tokens": 8, "ignore_eos": True}


def chat(http: httpx.Client, **body) -> dict:
    r = http.post("/v1/chat/completions", json={"model": TINY_NAME, "messages": MESSAGES, **body})
    assert r.status_code == 200, r.text
    return r.json()


def stream_events(http: httpx.Client, path: str, body: dict) -> list[dict]:
    events = []
    with http.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    return events


def inspected(server: LiveServer, ids: list[int], positions: list[int], k: int) -> list[dict]:
    """The features service's reading of `ids` (one capture, as /features/inspect reads):
    at each position, its k strongest features that fire, {feature id: activation}."""
    d = asyncio.run(server.app.state.features.dictionary(None))

    def read(engine) -> tuple[list, list]:
        captured, _ = engine.capture([ids], {d.layer})
        acts = d.activations(captured[0][d.layer])[positions]
        values, index = torch.topk(acts, k, dim=-1)
        return values.tolist(), index.tolist()

    values, index = asyncio.run(server.engine.call(read))
    return [
        {feature_id(d.features[i].uuid): v for i, v in zip(ii, vv, strict=True) if v != 0.0}
        for ii, vv in zip(index, values, strict=True)
    ]


def assert_same_features(found: list[dict], expected: dict) -> None:
    assert [f["id"] for f in found] == list(expected)
    assert [f["activation"] for f in found] == pytest.approx(list(expected.values()), abs=1e-3)


@pytest.fixture(scope="module")
def greedy_chat(http_module: httpx.Client) -> dict:
    return chat(http_module, readout={"features": 5}, logprobs=True, **GREEDY)


@pytest.fixture(scope="module")
def http_module(tiny_server: LiveServer):
    with httpx.Client(base_url=tiny_server.base_url, timeout=120) as c:
        yield c


def test_chat_readout_has_each_tokens_features_as_inspection_reads_them(
    tiny_server: LiveServer, http_module: httpx.Client, greedy_chat: dict
) -> None:
    choice = greedy_chat["choices"][0]
    readout = choice["readout"]
    assert len(readout) == greedy_chat["usage"]["completion_tokens"] == GREEDY["max_tokens"]
    # beside logprobs: the same tokens
    assert [r["token"] for r in readout] == [c["token"] for c in choice["logprobs"]["content"]]
    labels = {}
    for r in readout:
        assert 1 <= len(r["features"]) <= 5
        for f in r["features"]:
            assert set(f) == {"id", "label", "activation"}
            labels[f["id"]] = f["label"]
        activations = [f["activation"] for f in r["features"]]
        assert activations == sorted(activations, reverse=True)
    # the ids and labels are the ones /features/search reports
    hits = http_module.post(
        "/features/search",
        json={"query": next(iter(labels.values())), "session_id": "x", "top_k": 1000},
    ).json()
    known = {h["uuid"]: h["label"] for h in hits}
    assert all(known[i] == label for i, label in labels.items())

    prompt = http_module.post("/tokenize", json={"model": TINY_NAME, "messages": MESSAGES}).json()[
        "tokens"
    ]
    generated = [r["token_id"] for r in readout]
    ids = prompt + generated[:-1]
    positions = [len(prompt) - 1 + i for i in range(len(generated))]
    for r, expected in zip(readout, inspected(tiny_server, ids, positions, 5), strict=True):
        assert_same_features(r["features"], expected)


def test_streamed_chunks_carry_the_same_readout(
    http_module: httpx.Client, greedy_chat: dict
) -> None:
    events = stream_events(
        http_module,
        "/v1/chat/completions",
        {"model": TINY_NAME, "messages": MESSAGES, "readout": {"features": 5}, **GREEDY},
    )
    streamed = []
    for e in events:
        for c in e["choices"]:
            if c["delta"].get("content"):
                assert c.get("readout"), c  # every chunk with text carries its tokens' readout
            streamed += c.get("readout") or []
    expected = greedy_chat["choices"][0]["readout"]
    assert [r["token_id"] for r in streamed] == [r["token_id"] for r in expected]
    for got, want in zip(streamed, expected, strict=True):
        assert_same_features(got["features"], {f["id"]: f["activation"] for f in want["features"]})


def test_completions_readout_matches_inspection_streamed_and_not(
    tiny_server: LiveServer, http_module: httpx.Client
) -> None:
    prompt = "Once upon a time"
    body = {"model": TINY_NAME, "prompt": prompt, "readout": {"features": 3}, "echo": True,
            **GREEDY}  # fmt: skip
    r = http_module.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    readout = choice["readout"]
    assert len(readout) == GREEDY["max_tokens"]  # the generated tokens only, not the echo
    assert choice["text"].startswith(prompt)
    ids = http_module.post("/tokenize", json={"model": TINY_NAME, "prompt": prompt}).json()
    generated = [r["token_id"] for r in readout]
    positions = [ids["count"] - 1 + i for i in range(len(generated))]
    expected = inspected(tiny_server, ids["tokens"] + generated[:-1], positions, 3)
    for got, want in zip(readout, expected, strict=True):
        assert 1 <= len(got["features"]) <= 3
        assert_same_features(got["features"], want)

    events = stream_events(http_module, "/v1/completions", body)
    streamed = [x for e in events for c in e["choices"] for x in c.get("readout") or []]
    assert streamed == readout


def test_no_readout_field_unless_asked(http_module: httpx.Client) -> None:
    body = chat(http_module, **GREEDY)
    assert "readout" not in body["choices"][0]
    events = stream_events(
        http_module, "/v1/chat/completions", {"model": TINY_NAME, "messages": MESSAGES, **GREEDY}
    )
    assert not any("readout" in c for e in events for c in e["choices"])
    plain = {"model": TINY_NAME, "prompt": "Once upon a time", **GREEDY}
    assert "readout" not in http_module.post("/v1/completions", json=plain).json()["choices"][0]


def test_rows_without_readout_are_unaffected_in_the_same_batch(tiny_server: LiveServer) -> None:
    """Same seeds, same tokens: alone, or batched beside a row that reads features (which
    itself generates what it would without the readout)."""
    sampled = {"temperature": 1.0, "max_tokens": 16, "ignore_eos": True}
    plain = {"model": TINY_NAME, "messages": MESSAGES, "seed": 11, **sampled}
    other = {"model": TINY_NAME, "messages": MESSAGES, "seed": 12, **sampled}

    async def run(*bodies: dict) -> list[str]:
        async with httpx.AsyncClient(base_url=tiny_server.base_url, timeout=120) as c:
            rs = await asyncio.gather(*(c.post("/v1/chat/completions", json=b) for b in bodies))
        for r in rs:
            assert r.status_code == 200, r.text
        return [r.json()["choices"][0]["message"]["content"] for r in rs]

    (alone,) = asyncio.run(run(plain))
    (other_alone,) = asyncio.run(run(other))
    together = asyncio.run(run(plain, {**other, "readout": {"features": 8}}, plain))
    assert together == [alone, other_alone, alone]


def test_generate_token_readout_streamed_and_not(
    tiny_server: LiveServer, http_module: httpx.Client
) -> None:
    state = create_state(http_module)
    body = {
        "state_id": state["id"],
        "max_tokens": 6,
        "temperature": 0.0,
        "readout": {"features": 3},
    }
    r = http_module.post("/generate/token", json=body)
    assert r.status_code == 200, r.text
    tokens = r.json()["tokens"]
    assert len(tokens) == 6 and all(1 <= len(t["features"]) <= 3 for t in tokens)
    ids = state["token_ids"] + [t["token_id"] for t in tokens[:-1]]
    positions = [len(state["token_ids"]) - 1 + i for i in range(6)]
    for t, expected in zip(tokens, inspected(tiny_server, ids, positions, 3), strict=True):
        assert_same_features(t["features"], expected)

    events = [e for e in stream_events(http_module, "/generate/token", body) if "token_id" in e]
    assert [e["token_id"] for e in events] == [t["token_id"] for t in tokens]
    for e, t in zip(events, tokens, strict=True):
        assert [f["id"] for f in e["features"]] == [f["id"] for f in t["features"]]

    plain = http_module.post("/generate/token", json={**body, "readout": None}).json()
    assert all("features" not in t for t in plain["tokens"])


@pytest.mark.parametrize(
    ("readout", "status", "param"),
    [
        ({"features": 0}, 400, "readout.features"),
        ({"features": 65}, 400, "readout.features"),
        ({"features": 3, "dictionary": "no-such-dictionary"}, 404, "readout.dictionary"),
        ({"feature": 3}, 400, "readout.feature"),
        (5, 400, "readout"),
    ],
)
def test_bad_readout_is_a_4xx_naming_the_field(
    http_module: httpx.Client, readout, status: int, param: str
) -> None:
    r = http_module.post(
        "/v1/chat/completions",
        json={"model": TINY_NAME, "messages": MESSAGES, "readout": readout, "max_tokens": 2},
    )
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param
    if status == 404:
        assert "no-such-dictionary" in r.json()["error"]["message"]
    state = create_state(http_module)
    r = http_module.post("/generate/token", json={"state_id": state["id"], "readout": readout})
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param
