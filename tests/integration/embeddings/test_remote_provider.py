"""RemoteProvider and the fallback chain against a real OpenAI-compatible server: a live
glassbox's /v1/embeddings (the `embeddings_server` fixture), and a dead one (a closed port)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
from helpers.live_server import free_port

from glassbox.embeddings.providers import (
    CircuitBreaker,
    ProviderChain,
    ProviderError,
    RemoteProvider,
)

MODEL = "all-MiniLM-L6-v2"
TEXTS = ["The cat sat on the mat.", "Quarterly revenue grew by 12%.", "¡Hola, mundo!"]


@pytest.fixture
async def live(embeddings_server) -> AsyncIterator[RemoteProvider]:
    provider = RemoteProvider("live", embeddings_server.base_url + "/v1", timeout=60)
    yield provider
    await provider.aclose()


async def servers_answer(base_url: str, texts: list[str]) -> tuple[np.ndarray, int]:
    """The server's own answer, asked directly."""
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        r = await http.post("/v1/embeddings", json={"model": MODEL, "input": texts})
    r.raise_for_status()
    rows = [d["embedding"] for d in sorted(r.json()["data"], key=lambda d: d["index"])]
    return np.array(rows, dtype=np.float32), r.json()["usage"]["prompt_tokens"]


def counting_client() -> tuple[httpx.AsyncClient, list[httpx.Request]]:
    """A client that records every request it sends (each attempt)."""
    sent: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request)

    return httpx.AsyncClient(timeout=5, event_hooks={"request": [record]}), sent


async def test_the_vectors_are_the_servers(live: RemoteProvider, embeddings_server):
    want, tokens = await servers_answer(embeddings_server.base_url, TEXTS)

    result = await live.embed(TEXTS, MODEL)

    assert result.vectors.dtype == np.float32 and result.vectors.shape == want.shape
    assert np.array_equal(result.vectors, want) and result.prompt_tokens == tokens


async def test_a_mapped_name_asks_for_the_servers_name(embeddings_server):
    provider = RemoteProvider(
        "mapped", embeddings_server.base_url + "/v1", model_map={"minilm": MODEL}, timeout=60
    )
    try:
        want, _ = await servers_answer(embeddings_server.base_url, TEXTS[:1])
        assert not provider.serves(MODEL)
        assert np.array_equal((await provider.embed(TEXTS[:1], "minilm")).vectors, want)
    finally:
        await provider.aclose()


async def test_a_model_the_server_lacks_is_a_provider_error(embeddings_server):
    provider = RemoteProvider("wrong", embeddings_server.base_url + "/v1", {"m": "no-such-model"})
    try:
        with pytest.raises(ProviderError, match=r"error 404: .*no-such-model"):
            await provider.embed(["a"], "m")
    finally:
        await provider.aclose()


async def test_a_stopped_server_is_retried_then_a_provider_error():
    client, sent = counting_client()
    dead = RemoteProvider(
        "dead", f"http://127.0.0.1:{free_port()}/v1", retries=2, backoff=0.05, client=client
    )
    try:
        with pytest.raises(ProviderError, match=r"ConnectError.*\(after 3 attempts\)"):
            await dead.embed(TEXTS, MODEL)
        assert len(sent) == 3
    finally:
        await client.aclose()


async def test_the_chain_falls_back_from_a_dead_remote_and_opens_its_circuit(
    live: RemoteProvider, embeddings_server
):
    client, sent = counting_client()
    dead = RemoteProvider(
        "dead", f"http://127.0.0.1:{free_port()}/v1", retries=1, backoff=0.0, client=client
    )
    chain = ProviderChain(
        [dead, live], {"dead": CircuitBreaker(failure_threshold=2, recovery_seconds=60)}
    )
    want, _ = await servers_answer(embeddings_server.base_url, TEXTS)
    try:
        for _ in range(4):
            result, name = await chain.embed(TEXTS, MODEL)
            assert name == "live" and np.array_equal(result.vectors, want)

        assert len(sent) == 4  # two calls of two attempts each, then the circuit was open
        health = chain.health()
        assert health["dead"]["state"] == "open" and health["dead"]["total_failures"] == 2
        assert health["dead"]["total_rejections"] == 2
        assert health["live"]["state"] == "closed" and health["live"]["total_failures"] == 0
    finally:
        await client.aclose()
