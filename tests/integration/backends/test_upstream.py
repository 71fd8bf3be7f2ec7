"""OpenAIUpstreamBackend against a live glassbox server (the tiny model)."""

from __future__ import annotations

import json

import httpx
import pytest

from glassbox.backends import create_backend
from glassbox.backends.openai_upstream import OpenAIUpstreamBackend, UpstreamError
from glassbox.features.emotion import EmotionalState

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
async def upstream(tiny_server):
    """The backend, with the bodies it sent (`sent`) and the answers the upstream gave to its
    unstreamed requests (`replies`, the message content as sent on the wire)."""
    sent: list[dict] = []
    replies: list[str] = []

    async def record(request: httpx.Request) -> None:
        sent.append(json.loads(request.content))

    async def reply(response: httpx.Response) -> None:
        if not json.loads(response.request.content).get("stream"):
            await response.aread()
            replies.append(response.json()["choices"][0]["message"]["content"])

    hooks = {"request": [record], "response": [reply]}
    client = httpx.AsyncClient(timeout=60, event_hooks=hooks)
    model = tiny_server.settings.served_model_name
    backend = create_backend(
        "openai-upstream", base_url=tiny_server.base_url + "/v1", model=model, client=client
    )
    backend.sent, backend.replies = sent, replies
    yield backend
    await backend.aclose()
    await client.aclose()


async def test_answers_and_streams_the_same_text(upstream, tiny_server):
    assert isinstance(upstream, OpenAIUpstreamBackend)
    text = await upstream.chat_completion(MESSAGES, max_tokens=8, temperature=0.0)
    pieces = [
        p async for p in upstream.chat_completion_stream(MESSAGES, max_tokens=8, temperature=0.0)
    ]
    assert text == upstream.replies[0] and "".join(pieces) == text
    async with httpx.AsyncClient(base_url=tiny_server.base_url, timeout=60) as http:
        r = await http.post("/v1/chat/completions", json=upstream.sent[0])  # asked directly
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == text != ""
    assert upstream.sent[0] == {
        "model": upstream.model,
        "messages": MESSAGES,
        "temperature": 0.0,
        "top_p": 0.9,
        "max_tokens": 8,
        "stream": False,
    }
    assert upstream.sent[1]["stream"] is True


async def test_emotions_modulate_the_sampling_sent_upstream(upstream):
    for valence, arousal in [(-1, -1), (0, 0), (1, 1)]:
        coefficients = EmotionalState(valence, arousal).get_steering_coefficients()
        text = await upstream.chat_completion(
            MESSAGES, max_tokens=4, emotion_coefficients=coefficients
        )
        assert text == upstream.replies[-1]  # the upstream's answer to that sampling
    sampled = [v for b in upstream.sent for v in (b["temperature"], b["top_p"])]
    assert sampled == pytest.approx([0.4, 0.8, 0.7, 0.9, 1.0, 1.0])


async def test_upstream_errors_carry_the_servers_message(tiny_server):
    backend = OpenAIUpstreamBackend(tiny_server.base_url + "/v1", model="no-such-model")
    try:
        with pytest.raises(UpstreamError, match="upstream error 404.*no-such-model"):
            await backend.chat_completion(MESSAGES, max_tokens=2)
        with pytest.raises(UpstreamError, match="upstream error 404"):
            async for _ in backend.chat_completion_stream(MESSAGES, max_tokens=2):
                pass
    finally:
        await backend.aclose()
