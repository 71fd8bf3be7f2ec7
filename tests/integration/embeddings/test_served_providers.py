"""Remote embedding providers configured in the server: the fallback chain skips a dead
provider and opens its circuit, which /health and /metrics show; the allowlist hides the
models a tenant may not use."""

from __future__ import annotations

import httpx
import numpy as np
from helpers.live_server import free_port
from helpers.server import running, tiny_settings

from glassbox.config import EmbeddingProviderSpec

REMOTE = "remote-mini"


def test_the_chain_falls_back_and_opens_the_dead_circuit(
    embeddings_server, tiny_model_dir, tmp_path
):
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    providers = [
        EmbeddingProviderSpec(name="dead", base_url=dead, models={REMOTE: "all-MiniLM-L6-v2"},
                              retries=0, failure_threshold=2, recovery_seconds=600),
        EmbeddingProviderSpec(name="peer", base_url=embeddings_server.base_url + "/v1",
                              models={REMOTE: "all-MiniLM-L6-v2"}),
    ]  # fmt: skip
    settings = tiny_settings(tiny_model_dir, tmp_path).model_copy(
        update={"embeddings_providers": providers, "embeddings_fallback": ["dead", "peer"]}
    )
    with running(settings) as front, httpx.Client(base_url=front.base_url, timeout=60) as http:
        cards = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
        assert cards[REMOTE]["backend"] == "embedding-provider"
        texts = [f"fallback text {i}" for i in range(3)]
        for text in texts:
            r = http.post("/v1/embeddings", json={"model": REMOTE, "input": text})
            assert r.status_code == 200, r.text
            assert r.json()["model"] == REMOTE
        direct = httpx.post(
            embeddings_server.base_url + "/v1/embeddings", json={"input": texts[-1]}
        ).json()
        assert np.allclose(r.json()["data"][0]["embedding"], direct["data"][0]["embedding"])
        circuits = http.get("/health").json()["components"]["embeddings"]["providers"]
        assert circuits["dead"]["state"] == "open" and circuits["peer"]["state"] == "closed"
        assert circuits["dead"]["total_rejections"] >= 1  # the third request skipped it
        metrics = http.get("/metrics").text
        assert 'glassbox_embedding_provider_circuit{provider="dead"} 2.0' in metrics
        assert 'glassbox_embedding_provider_circuit{provider="peer"} 0.0' in metrics
        # the local model is not in this chain: its names have no provider left
        r = http.post("/v1/embeddings", json={"input": "x"})
        assert r.status_code == 404, r.text


def test_the_allowlist_hides_other_models(tiny_model_dir, tmp_path):
    settings = tiny_settings(tiny_model_dir, tmp_path).model_copy(
        update={"embeddings_allowlist": {"local": ["sentence-transformers/all-MiniLM-L6-v2"]}}
    )
    with running(settings) as server, httpx.Client(base_url=server.base_url) as http:
        r = http.post("/v1/embeddings", json={"input": "x", "model": "all-MiniLM-L6-v2"})
        assert r.status_code == 404 and "not available to you" in r.json()["error"]["message"]
        r = http.post(
            "/v1/embeddings",
            json={"input": "x", "model": "sentence-transformers/all-MiniLM-L6-v2"},
        )
        assert r.status_code == 200, r.text
