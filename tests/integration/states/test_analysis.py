"""/analysis against a live tiny server: token logprobs, attention (JSON and PNG) and the
cache summary of a state, and the 4xx of bad requests."""

from __future__ import annotations

import io
import math

import httpx
import pytest
from helpers.server import LiveServer
from PIL import Image

TEXT = "the quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def state(tiny_server: LiveServer) -> dict:
    with httpx.Client(base_url=tiny_server.base_url, timeout=30) as c:
        r = c.post("/states", json={"text": TEXT})
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture(scope="module")
def config(tiny_server: LiveServer):
    return tiny_server.engine.model_config


def test_token_analysis(http: httpx.Client, state: dict) -> None:
    r = http.get(f"/analysis/tokens/{state['id']}", params={"top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "analysis.tokens" and body["state_id"] == state["id"]
    tokens = body["tokens"]
    assert [t["token_id"] for t in tokens] == state["token_ids"][1:]
    for t in tokens:
        assert len(t["top"]) == 3 and t["logprob"] <= t["top"][0]["logprob"] + 1e-6
        assert (t["rank"] == 1) == (t["token_id"] == t["top"][0]["token_id"])
        assert t["entropy"] >= 0
    mean = sum(t["logprob"] for t in tokens) / len(tokens)
    assert body["mean_logprob"] == pytest.approx(mean, abs=1e-5)
    assert body["perplexity"] == pytest.approx(math.exp(-mean), rel=1e-5)


def test_attention_json(http: httpx.Client, state: dict, config) -> None:
    n = state["num_tokens"]
    r = http.post(f"/analysis/attention/{state['id']}", json={"layer": 1, "head": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["layer"] == 1 and body["head"] == 0 and len(body["tokens"]) == n
    weights = body["weights"]
    assert len(weights) == n and all(len(row) == n for row in weights)
    for q, row in enumerate(weights):
        assert sum(row) == pytest.approx(1.0, abs=1e-5)
        assert all(w == 0 for w in row[q + 1 :])
    assert len(body["entries"]) == n * (n + 1) // 2

    mean = http.post(f"/analysis/attention/{state['id']}", json={"layer": 0}).json()
    assert mean["head"] is None
    per_head = [
        http.post(f"/analysis/attention/{state['id']}", json={"layer": 0, "head": h}).json()
        for h in range(config.num_heads)
    ]
    expected = sum(p["weights"][-1][0] for p in per_head) / config.num_heads
    assert mean["weights"][-1][0] == pytest.approx(expected, abs=1e-5)


def test_attention_normalized_with_threshold(http: httpx.Client, state: dict) -> None:
    body = {"layer": 1, "threshold": 0.5, "normalized": True}
    r = http.post(f"/analysis/attention/{state['id']}", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert all(max(row) == pytest.approx(1.0) for row in out["weights"])
    assert all(w == 0 or w >= 0.5 for row in out["weights"] for w in row)
    assert all(e["weight"] >= 0.5 for e in out["entries"])
    assert len(out["entries"]) == sum(w > 0 for row in out["weights"] for w in row)


def test_attention_png(http: httpx.Client, state: dict) -> None:
    body = {"layer": 0, "head": 1, "format": "png"}
    r = http.post(f"/analysis/attention/{state['id']}", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    n = state["num_tokens"]
    image = Image.open(io.BytesIO(r.content))
    assert image.format == "PNG" and image.size == (512 // n * n, 512 // n * n)


def test_cache_summary(tiny_server: LiveServer, http: httpx.Client, state: dict, config) -> None:
    used = tiny_server.engine.stats()["kv_blocks_used"]
    r = http.post(f"/analysis/cache/{state['id']}")
    assert r.status_code == 200, r.text
    body = r.json()
    n = state["num_tokens"] - 1
    assert body["layer_range"] == [0, config.num_layers] and body["num_tokens"] == n
    layer = body["layers"][0]
    assert layer["k_shape"] == layer["v_shape"] == [n, config.num_kv_heads, config.head_dim]
    assert len(layer["k_norms"]["mean"]) == config.num_kv_heads
    assert body["total_bytes"] == state["bytes"]

    one = http.post(f"/analysis/cache/{state['id']}", json={"layer_range": [1, 2]}).json()
    assert [x["layer"] for x in one["layers"]] == [1]
    assert one["total_bytes"] == state["bytes"] // config.num_layers
    assert tiny_server.engine.stats()["kv_blocks_used"] == used  # the lease was released


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("attention", {"layer": 99}, "layer"),
        ("attention", {"layer": 0, "head": 99}, "head"),
        ("attention", {"layer": 0, "threshold": 2}, "threshold"),
        ("attention", {"layer": 0, "format": "gif"}, "format"),
        ("cache", {"layer_range": [1, 1]}, "layer_range"),
        ("cache", {"layer_range": [0, 99]}, "layer_range"),
        ("cache", {"layer_range": [-1, 1]}, "layer_range"),
    ],
)
def test_bad_requests_are_400(http: httpx.Client, state: dict, path, body, param) -> None:
    r = http.post(f"/analysis/{path}/{state['id']}", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_bad_top_k_and_missing_state(http: httpx.Client) -> None:
    r = http.get("/analysis/tokens/nope", params={"top_k": 5})
    assert r.status_code == 404 and r.json()["error"]["code"] == "state_not_found"
    assert http.post("/analysis/attention/nope", json={"layer": 0}).status_code == 404
    assert http.post("/analysis/cache/nope").status_code == 404
    assert http.get("/analysis/tokens/nope", params={"top_k": 99}).status_code == 400
