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
    sent: list[dict] = []

    async def record(request: httpx.Request) -> None:
        sent.append(json.loads(request.content))

    client = httpx.AsyncClient(timeout=60, event_hooks={"request": [record]})
    model = tiny_server.settings.served_model_name
    backend = create_backend(
        "openai-upstream", base_url=tiny_server.base_url + "/v1", model=model, client=client
    )
    backend.sent = sent
    yield backend
    await backend.aclose()
    await client.aclose()


async def test_answers_and_streams_the_same_text(upstream):
    assert isinstance(upstream, OpenAIUpstreamBackend)
    text = await upstream.chat_completion(MESSAGES, max_tokens=8, temperature=0.0)
    pieces = [
        p async for p in upstream.chat_completion_stream(MESSAGES, max_tokens=8, temperature=0.0)
    ]
    assert text and "".join(pieces) == text
    assert upstream.sent[0] == {
        "model": upstream.model,
        "messages": MESSAGES,
        "temperature": 0.0,
        "top_p": 0.9,
        "max_tokens": 8,
    }
    assert upstream.sent[1]["stream"] is True


async def test_emotions_modulate_the_sampling_sent_upstream(upstream):
    for valence, arousal in [(-1, -1), (0, 0), (1, 1)]:
        coefficients = EmotionalState(valence, arousal).get_steering_coefficients()
        assert isinstance(
            await upstream.chat_completion(
                MESSAGES, max_tokens=4, emotion_coefficients=coefficients
            ),
            str,
        )
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
