"""Every surface goes through the one request path: the same messages sent to the OpenAI, Ember
and states routes become the same token ids."""

from __future__ import annotations

import httpx
import openai
import pytest
from helpers.server import TINY_NAME, LiveServer

MESSAGES = [
    {"role": "system", "content": "You answer in one word."},
    {"role": "user", "content": "Name a colour of the sea."},
]


@pytest.fixture
def submitted(tiny_server: LiveServer, monkeypatch) -> list[list[int]]:
    """The prompt ids of every sequence the live engine is given while the test runs."""
    seen: list[list[int]] = []
    real = tiny_server.engine.submit

    def spy(prompt_token_ids, params, prefix=None):
        seen.append(list(prompt_token_ids))
        return real(prompt_token_ids, params, prefix)

    monkeypatch.setattr(tiny_server.engine, "submit", spy)
    return seen


def test_the_same_messages_become_the_same_token_ids_on_every_surface(
    tiny_server: LiveServer, http: httpx.Client, client: openai.OpenAI, submitted: list
) -> None:
    expected = tiny_server.engine.tokenizer.hf.apply_chat_template(
        MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False
    )

    client.chat.completions.create(model=TINY_NAME, messages=MESSAGES, max_tokens=2)
    assert len(submitted) == 1
    openai_ids = submitted[0]

    ember = http.post(
        "/api/inference/v1/chat/completions",
        json={"model": TINY_NAME, "messages": MESSAGES, "max_completion_tokens": 2},
    )
    assert ember.status_code == 200, ember.text
    assert len(submitted) == 2
    ember_ids = submitted[1]

    state = http.post("/states", json={"messages": MESSAGES})
    assert state.status_code == 201, state.text
    state_ids = state.json()["token_ids"]

    tokenized = http.post("/tokenize", json={"messages": MESSAGES}).json()["tokens"]

    assert openai_ids == list(expected)
    assert ember_ids == openai_ids
    assert state_ids == openai_ids
    assert tokenized == openai_ids

    # The state's continuation starts from exactly those tokens.
    generated = http.post("/generate/token", json={"state_id": state.json()["id"], "max_tokens": 1})
    assert generated.status_code == 200, generated.text
    assert submitted[2] == openai_ids
    http.delete(f"/states/{state.json()['id']}")


def test_the_context_limit_reads_the_same_on_every_surface(
    tiny_server: LiveServer, http: httpx.Client
) -> None:
    long = [{"role": "user", "content": "sea " * 600}]
    openai_err = http.post("/v1/chat/completions", json={"messages": long}).json()["error"]
    ember_err = http.post("/api/inference/v1/chat/completions", json={"messages": long}).json()[
        "error"
    ]
    state_err = http.post("/states", json={"messages": long}).json()["error"]
    for err in (openai_err, ember_err, state_err):
        assert err["code"] == "context_length_exceeded"
        assert err["message"].startswith(
            f"This model's maximum context length is {tiny_server.engine.max_model_len} tokens, "
            "but the prompt has "
        )
    assert openai_err["message"] == ember_err["message"] == state_err["message"]
