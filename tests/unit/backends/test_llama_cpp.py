"""The llama-cpp backend serving OpenAI's requests on the bundled GGUF (the `llama_backend`
fixture: conftest.py): answers in OpenAI's shape, streams, JSON output enforced by llama.cpp's
grammar, fields it refuses, errors as domain errors, streams closed early."""

from __future__ import annotations

import json

import jsonschema
import pytest
from helpers.waiting import async_wait_until

from glassbox.errors import ContextLengthExceeded, InvalidRequest, NotCapable

pytestmark = pytest.mark.slow

MODEL = "smollm2"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"model": MODEL, "temperature": 0.0}
PROMPT = "The capital of France is"
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}
WEATHER_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "weather", "schema": WEATHER, "strict": True},
}
TOO_LONG = "word " * 600  # more tokens than the fixture's n_ctx of 512
ADD = {
    "type": "function",
    "function": {"name": "add", "parameters": {"type": "object", "properties": {}}},
}


def _spy(monkeypatch, backend, name: str) -> list[dict]:
    """Record the keywords of every call to the backend's `Llama.<name>`."""
    calls: list[dict] = []
    original = getattr(backend.llm, name)

    def spy(**kwargs):
        calls.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(backend.llm, name, spy)
    return calls


async def _joined_chat(stream) -> tuple[str, list[dict]]:
    chunks = [chunk async for chunk in stream]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    return text, chunks


# --- chat ---------------------------------------------------------------------------------


async def test_chat_completion_in_openais_shape(llama_backend):
    answer = await llama_backend.chat_completions(
        {**GREEDY, "messages": QUESTION, "max_completion_tokens": 8}
    )
    assert answer["id"].startswith("chatcmpl") and answer["object"] == "chat.completion"
    assert answer["model"] == MODEL and isinstance(answer["created"], int)
    (choice,) = answer["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    usage = answer["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert json.loads(json.dumps(answer)) == answer


async def test_body_fields_become_llama_cpp_keywords(llama_backend, monkeypatch):
    calls = _spy(monkeypatch, llama_backend, "create_chat_completion")
    body = {
        **GREEDY,
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": t} for t in ("Hi", "there")]},
        ],
        "max_tokens": 4,
        "top_p": 0.5,
        "top_k": 5,
        "min_p": 0.1,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "repetition_penalty": 1.2,
        "stop": ["\n"],
        "seed": 3,
        "logit_bias": {"42": -5},
        "user": "someone",  # harmless fields are ignored
        "metadata": {"k": "v"},
        "prediction": {"type": "content", "content": "Hello"},
    }  # fmt: skip
    await llama_backend.chat_completions(body)
    sent = calls[-1]
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi\nthere"},
    ]
    expected = {
        "max_tokens": 4, "temperature": 0.0, "top_p": 0.5, "top_k": 5, "min_p": 0.1,
        "presence_penalty": 0.5, "frequency_penalty": 0.25, "repeat_penalty": 1.2,
        "stop": ["\n"], "seed": 3, "logit_bias": {42: -5.0}, "grammar": None, "model": MODEL,
    }  # fmt: skip
    assert {k: sent[k] for k in expected} == expected
    assert not {"user", "metadata", "prediction", "logprobs"} & set(sent)

    # Left out: the backend's temperature and top_p, and no top_k, min_p or penalties.
    await llama_backend.chat_completions({"messages": QUESTION, "max_completion_tokens": 2})
    sent = calls[-1]
    defaults = {
        "max_tokens": 2, "temperature": 0.7, "top_p": 0.9, "top_k": 0, "min_p": 0.0,
        "presence_penalty": 0.0, "frequency_penalty": 0.0, "repeat_penalty": 1.0, "seed": None,
    }  # fmt: skip
    assert {k: sent[k] for k in defaults} == defaults


async def test_logit_bias_changes_the_greedy_answer(llama_backend):
    body = {**GREEDY, "messages": QUESTION, "max_tokens": 8}
    plain = (await llama_backend.chat_completions(body))["choices"][0]["message"]["content"]
    first = llama_backend.llm.tokenize(plain.encode(), add_bos=False, special=False)[0]
    banned = await llama_backend.chat_completions({**body, "logit_bias": {str(first): -100}})
    text = banned["choices"][0]["message"]["content"]
    assert text != plain
    assert llama_backend.llm.tokenize(text.encode(), add_bos=False, special=False)[0] != first
    with pytest.raises(InvalidRequest, match="logit_bias keys must be token ids") as caught:
        await llama_backend.chat_completions({**body, "logit_bias": {"99999999": 1}})
    assert caught.value.param == "logit_bias"


async def test_stream_joins_into_the_unstreamed_answer(llama_backend):
    body = {**GREEDY, "messages": QUESTION, "max_tokens": 16}
    answer = await llama_backend.chat_completions(body)
    text, chunks = await _joined_chat(
        llama_backend.chat_completions_stream({**body, "stream_options": {"include_usage": True}})
    )
    assert text == answer["choices"][0]["message"]["content"] and text
    assert len(chunks) > 3
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["finish_reason"] == answer["choices"][0]["finish_reason"]
    # llama-cpp-python's streams carry no token counts: no usage chunk (see the docstring)
    assert all(c.get("usage") is None for c in chunks)
    # the reference interface streams the same text
    pieces = [
        p
        async for p in llama_backend.chat_completion_stream(QUESTION, 16, 0.0, None)
    ]  # fmt: skip
    assert "".join(pieces) == text


async def test_closing_a_stream_early_stops_the_generation(llama_backend, monkeypatch):
    produced = []
    original = llama_backend.llm.create_chat_completion

    def counting(**kwargs):
        chunks = original(**kwargs)
        if not kwargs.get("stream"):
            return chunks

        def count():
            for chunk in chunks:
                produced.append(chunk)
                yield chunk

        return count()

    monkeypatch.setattr(llama_backend.llm, "create_chat_completion", counting)
    endless = {str(t): -100 for t in range(3)}  # <|endoftext|>, <|im_start|>, <|im_end|>
    body = {**GREEDY, "messages": QUESTION, "max_tokens": 300, "logit_bias": endless}
    stream = llama_backend.chat_completions_stream(body)
    async for _ in stream:
        break
    await stream.aclose()
    assert await async_wait_until(lambda: not llama_backend._lock.locked())
    assert len(produced) < 100  # not the 300 tokens asked for
    # the backend serves the next request
    answer = await llama_backend.chat_completions({**GREEDY, "messages": QUESTION, "max_tokens": 4})
    assert answer["choices"][0]["message"]["content"]


# --- completions --------------------------------------------------------------------------


async def test_completion_streamed_echoed_and_from_token_ids(llama_backend):
    body = {**GREEDY, "prompt": PROMPT, "max_tokens": 6}
    answer = await llama_backend.completions(body)
    assert answer["id"].startswith("cmpl") and answer["object"] == "text_completion"
    assert answer["model"] == MODEL
    (choice,) = answer["choices"]
    text = choice["text"]
    assert text.strip() and choice["finish_reason"] in ("stop", "length")
    assert answer["usage"]["completion_tokens"] <= 6

    chunks = [c async for c in llama_backend.completions_stream(body)]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert "".join(c["choices"][0]["text"] for c in chunks) == text
    assert chunks[-1]["choices"][0]["finish_reason"] == choice["finish_reason"]

    echoed = await llama_backend.completions({**body, "echo": True})
    assert echoed["choices"][0]["text"] == PROMPT + text
    chunks = [c async for c in llama_backend.completions_stream({**body, "echo": True})]
    assert "".join(c["choices"][0]["text"] for c in chunks) == PROMPT + text

    ids = llama_backend.llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
    for prompt in (ids, [ids], [PROMPT]):
        again = await llama_backend.completions({**body, "prompt": prompt})
        assert again["choices"][0]["text"] == text
    with pytest.raises(InvalidRequest, match="outside the vocabulary") as caught:
        await llama_backend.completions({**body, "prompt": [1, 99999999]})
    assert caught.value.param == "prompt"


# --- JSON output --------------------------------------------------------------------------


async def test_json_schema_is_enforced_while_decoding(llama_backend):
    messages = [{"role": "user", "content": "What's the weather like in Paris?"}]
    body = {**GREEDY, "messages": messages, "max_tokens": 48}
    free = (await llama_backend.chat_completions(body))["choices"][0]["message"]["content"]
    with pytest.raises(json.JSONDecodeError):
        json.loads(free)  # the model does not answer in JSON by itself

    answer = await llama_backend.chat_completions({**body, "response_format": WEATHER_FORMAT})
    assert answer["choices"][0]["finish_reason"] == "stop"
    texts = [answer["choices"][0]["message"]["content"]]
    texts.append(
        (await _joined_chat(
            llama_backend.chat_completions_stream({**body, "response_format": WEATHER_FORMAT})
        ))[0]
    )  # fmt: skip
    texts.append(
        await llama_backend.chat_completion(messages, 48, 0.0, response_format=WEATHER_FORMAT)
    )
    completion = await llama_backend.completions(
        {**GREEDY, "prompt": "Paris:", "max_tokens": 48, "response_format": WEATHER_FORMAT}
    )
    texts.append(completion["choices"][0]["text"])
    for text in texts:
        value = json.loads(text)
        jsonschema.validate(value, WEATHER)
        assert set(value) == {"city", "unit"}  # objects are closed


async def test_json_object_is_enforced(llama_backend):
    messages = [{"role": "user", "content": "Answer in JSON: what is the capital of France?"}]
    body = {**GREEDY, "messages": messages, "max_tokens": 40}
    free = (await llama_backend.chat_completions(body))["choices"][0]["message"]["content"]
    with pytest.raises(json.JSONDecodeError):
        json.loads(free)
    answer = await llama_backend.chat_completions(
        {**body, "response_format": {"type": "json_object"}}
    )
    assert isinstance(json.loads(answer["choices"][0]["message"]["content"]), dict)


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "integr"}, "invalid JSON schema at '/type'"),
        ({"type": "string", "pattern": "[a-z]+"}, "llama.cpp cannot turn this JSON schema"),
        ({"$ref": "https://example.com/schema.json"}, "llama.cpp cannot turn this JSON schema"),
    ],
)
async def test_a_schema_llama_cpp_refuses_is_a_bad_request(llama_backend, schema, message):
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    body = {**GREEDY, "messages": QUESTION, "max_tokens": 4, "response_format": fmt}
    attempts = [
        lambda: llama_backend.chat_completions(body),
        lambda: llama_backend.chat_completion(QUESTION, 4, response_format=fmt),
        lambda: llama_backend.completions({**GREEDY, "prompt": PROMPT, "response_format": fmt}),
    ]
    for attempt in attempts:
        with pytest.raises(InvalidRequest, match=message) as caught:
            await attempt()
        assert caught.value.param == "response_format"
    with pytest.raises(InvalidRequest, match="response_format.type must be"):
        llama_backend.chat_completions_stream({**body, "response_format": {"type": "xml"}})


# --- refusals and errors ------------------------------------------------------------------

REFUSED_CHAT = [
    ("n", 2),
    ("tools", [ADD]),
    ("tool_choice", "required"),
    ("functions", [ADD["function"]]),
    ("guided_regex", "a+"),
    ("guided_choice", ["yes", "no"]),
    ("guided_grammar", "start: 'a'"),
    ("logprobs", True),  # the model is loaded without logits_all
    ("ignore_eos", True),
    ("add_generation_prompt", False),
    ("messages", [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
]
REFUSED_COMPLETION = [
    ("n", 3),
    ("best_of", 2),
    ("suffix", " and that is all."),
    ("guided_json", {"type": "object"}),
    ("prompt", ["one prompt", "another prompt"]),
    ("logprobs", 1),
    ("stop_token_ids", [5]),
]


@pytest.mark.parametrize(("field", "value"), REFUSED_CHAT)
async def test_chat_fields_it_cannot_honour_are_refused_first(
    llama_backend, monkeypatch, field, value
):
    calls = _spy(monkeypatch, llama_backend, "create_chat_completion")
    body = {**GREEDY, "messages": QUESTION, "max_tokens": 4, field: value}
    with pytest.raises(NotCapable, match=f"llama-cpp backend cannot honour '{field}'") as caught:
        await llama_backend.chat_completions(body)
    assert caught.value.param == field
    with pytest.raises(NotCapable, match=f"'{field}'"):
        llama_backend.chat_completions_stream(body)  # raised when called, before the first chunk
    assert calls == []


@pytest.mark.parametrize(("field", "value"), REFUSED_COMPLETION)
async def test_completion_fields_it_cannot_honour_are_refused_first(
    llama_backend, monkeypatch, field, value
):
    calls = _spy(monkeypatch, llama_backend, "create_completion")
    body = {**GREEDY, "prompt": PROMPT, "max_tokens": 4, field: value}
    with pytest.raises(NotCapable, match=f"llama-cpp backend cannot honour '{field}'") as caught:
        await llama_backend.completions(body)
    assert caught.value.param == field
    with pytest.raises(NotCapable, match=f"'{field}'"):
        llama_backend.completions_stream(body)  # raised when called, before the first chunk
    assert calls == []


async def test_logprobs_with_logits_all(llama_logprobs_backend):
    backend = llama_logprobs_backend
    answer = await backend.chat_completions(
        {**GREEDY, "messages": QUESTION, "max_tokens": 3, "logprobs": True, "top_logprobs": 2}
    )
    content = answer["choices"][0]["logprobs"]["content"]
    assert len(content) == answer["usage"]["completion_tokens"]
    assert all(isinstance(t["logprob"], float) and t["logprob"] <= 0 for t in content)
    assert all(2 <= len(t["top_logprobs"]) <= 3 for t in content)
    assert json.loads(json.dumps(answer)) == answer  # floats, not numpy's
    completion = await backend.completions(
        {**GREEDY, "prompt": PROMPT, "max_tokens": 3, "logprobs": 2}
    )
    logprobs = completion["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == 3
    assert "".join(logprobs["tokens"]) == completion["choices"][0]["text"]
    with pytest.raises(NotCapable, match="'echo'"):
        await backend.completions({**GREEDY, "prompt": PROMPT, "logprobs": 1, "echo": True})


async def test_a_prompt_longer_than_the_context(llama_backend):
    messages = [{"role": "user", "content": TOO_LONG}]
    with pytest.raises(ContextLengthExceeded, match="maximum context length is 512") as caught:
        await llama_backend.chat_completions({"messages": messages, "max_tokens": 4})
    assert caught.value.param == "messages"
    stream = llama_backend.chat_completions_stream({"messages": messages, "max_tokens": 4})
    with pytest.raises(ContextLengthExceeded) as caught:
        await anext(stream)
    assert caught.value.param == "messages"
    with pytest.raises(ContextLengthExceeded) as caught:
        await llama_backend.completions({"prompt": TOO_LONG, "max_tokens": 4})
    assert caught.value.param == "prompt"
    with pytest.raises(ContextLengthExceeded) as caught:
        await anext(llama_backend.completions_stream({"prompt": TOO_LONG, "max_tokens": 4}))
    assert caught.value.param == "prompt"
    # still serving
    answer = await llama_backend.completions({**GREEDY, "prompt": PROMPT, "max_tokens": 2})
    assert answer["choices"][0]["text"]
