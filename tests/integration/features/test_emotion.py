"""Elpis-style steering over HTTP: emotion coefficients or an emotional state blend the
concept vectors of excited / calm / frustrated / depleted into the request's plan."""

from __future__ import annotations

import openai
from helpers.server import TINY_NAME

MESSAGES = [{"role": "user", "content": "Tell me about your day."}]


def _chat(client: openai.OpenAI, **extra) -> str:
    r = client.chat.completions.create(
        model=TINY_NAME, messages=MESSAGES, max_tokens=12, temperature=0, extra_body=extra
    )
    return r.choices[0].message.content


def test_emotion_coefficients_steer_and_zero_coefficients_do_not(client) -> None:
    plain = _chat(client)
    assert _chat(client, emotion_coefficients={"excited": 0.0, "calm": 0.0}) == plain
    assert _chat(client, emotion_coefficients={"excited": 6.0, "frustrated": 3.0}) != plain


def test_emotional_state_maps_onto_the_quadrant_emotions(client) -> None:
    plain = _chat(client)
    excited = _chat(client, emotional_state={"valence": 1.0, "arousal": 1.0})
    assert excited != plain
    # (1, 1) is all "excited": the same as asking for excited at full weight
    assert excited == _chat(client, emotion_coefficients={"excited": 1.0})


def test_emotion_errors(http) -> None:
    body = {"model": TINY_NAME, "messages": MESSAGES, "max_tokens": 2}
    r = http.post("/v1/chat/completions", json={**body, "emotion_coefficients": {"zzz": 1.0}})
    assert r.status_code == 400 and "excited" in r.json()["error"]["message"]
    r = http.post(
        "/v1/chat/completions", json={**body, "emotional_state": {"valence": 2, "arousal": 0}}
    )
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("emotional_state")
    both = {"emotion_coefficients": {"calm": 1.0}, "emotional_state": {"valence": 0, "arousal": 0}}
    assert http.post("/v1/chat/completions", json={**body, **both}).status_code == 400
