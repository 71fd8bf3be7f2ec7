"""/v1/chat/completions through the official openai client against a live server."""

from __future__ import annotations

import asyncio

import openai
from helpers.server import TINY_MAX_LEN, TINY_NAME

from glassbox.models.tokenizer import Tokenizer

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0.0, "extra_body": {"ignore_eos": True}}


def prompt_tokens(http, messages=MESSAGES) -> int:
    return http.post("/tokenize", json={"messages": messages}).json()["count"]


def test_chat_non_stream(client: openai.OpenAI, http) -> None:
    r = client.chat.completions.create(model=TINY_NAME, messages=MESSAGES, max_tokens=8, **GREEDY)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.model == TINY_NAME
    [choice] = r.choices
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason == "length"
    assert r.usage.completion_tokens == 8
    assert r.usage.prompt_tokens == prompt_tokens(http)
    assert r.usage.total_tokens == r.usage.prompt_tokens + 8


def test_chat_stream_matches_non_stream_and_ends_with_usage(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(
        model=TINY_NAME, messages=MESSAGES, max_tokens=12, **GREEDY
    )
    chunks = list(
        client.chat.completions.create(
            model=TINY_NAME, messages=MESSAGES, max_tokens=12, stream=True,
            stream_options={"include_usage": True}, **GREEDY,
        )
    )  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_include_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model=TINY_NAME, messages=MESSAGES, max_tokens=3,
                                       stream=True, **GREEDY)
    )  # fmt: skip
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None and c.choices for c in chunks)


def test_n_choices_use_distinct_seeds_and_count_the_prompt_once(client, http) -> None:
    r = client.chat.completions.create(
        model=TINY_NAME, messages=MESSAGES, n=2, max_tokens=8, seed=7, temperature=1.0,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].message.content != r.choices[1].message.content
    assert r.usage.completion_tokens == 16
    assert r.usage.prompt_tokens == prompt_tokens(http)
    # choice 1 of seed 7 is sampled with seed 8
    single = client.chat.completions.create(
        model=TINY_NAME, messages=MESSAGES, max_tokens=8, seed=8, temperature=1.0,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert single.choices[0].message.content == r.choices[1].message.content


def test_n_choices_stream(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=TINY_NAME, messages=MESSAGES, n=2, max_tokens=5, stream=True, seed=1,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )
    )  # fmt: skip
    finished = [ch.index for c in chunks for ch in c.choices if ch.finish_reason == "length"]
    assert sorted(finished) == [0, 1]
    assert chunks[-1].usage.completion_tokens == 10


def test_logprobs_and_top_logprobs(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=TINY_NAME, messages=MESSAGES, max_tokens=6, logprobs=True, top_logprobs=3, **GREEDY
    )
    content = r.choices[0].logprobs.content
    assert len(content) == 6
    for item in content:
        assert item.logprob <= 0.0
        assert item.bytes == list(item.token.encode("utf-8"))
        assert len(item.top_logprobs) == 3
        tops = [t.logprob for t in item.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        assert abs(item.logprob - tops[0]) < 1e-5  # greedy picks the most likely token


def test_logprobs_in_stream(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model=TINY_NAME, messages=MESSAGES, max_tokens=5,
                                       stream=True, logprobs=True, top_logprobs=2, **GREEDY)
    )  # fmt: skip
    items = [i for c in chunks for ch in c.choices if ch.logprobs for i in ch.logprobs.content]
    assert len(items) == 5 and all(len(i.top_logprobs) == 2 for i in items)


def test_no_logprobs_unless_asked(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=TINY_NAME, messages=MESSAGES, max_tokens=2, **GREEDY)
    assert r.choices[0].logprobs is None


def _sample(client, seed: int) -> str:
    r = client.chat.completions.create(
        model=TINY_NAME, messages=MESSAGES, max_tokens=10, seed=seed, temperature=1.0,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    return r.choices[0].message.content


def test_seed_reproducible(client: openai.OpenAI) -> None:
    assert _sample(client, 42) == _sample(client, 42)
    assert _sample(client, 42) != _sample(client, 43)


async def test_seed_reproducible_under_concurrency(client, aclient: openai.AsyncOpenAI) -> None:
    reference = _sample(client, 42)

    async def one(seed: int, max_tokens: int) -> str:
        r = await aclient.chat.completions.create(
            model=TINY_NAME, messages=MESSAGES, max_tokens=max_tokens, seed=seed,
            temperature=1.0, extra_body={"ignore_eos": True},
        )  # fmt: skip
        return r.choices[0].message.content

    # Batch the seeded requests with others of different lengths and seeds.
    jobs = [one(42, 10), one(1, 30), one(42, 10), one(2, 5), one(None, 20), one(42, 10)]
    results = await asyncio.gather(*jobs)
    assert results[0] == results[2] == results[5] == reference
    await aclient.close()


def test_stop_string_is_never_in_output(client: openai.OpenAI) -> None:
    free = client.chat.completions.create(
        model=TINY_NAME, messages=MESSAGES, max_tokens=40, **GREEDY
    )
    text = free.choices[0].message.content
    # a two-character ASCII stop string from the middle of the greedy text
    start = next(i for i in range(len(text) // 2, len(text) - 1) if text[i : i + 2].isascii())
    stop = text[start : start + 2]
    expected = text[: text.index(stop)]
    r = client.chat.completions.create(
        model=TINY_NAME, messages=MESSAGES, max_tokens=40, stop=[stop, "never-there"], **GREEDY
    )
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == expected
    assert stop not in r.choices[0].message.content
    chunks = list(
        client.chat.completions.create(model=TINY_NAME, messages=MESSAGES, max_tokens=40,
                                       stop=stop, stream=True, **GREEDY)
    )  # fmt: skip
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_max_tokens_defaults_to_the_rest_of_the_context(client: openai.OpenAI, http) -> None:
    r = client.chat.completions.create(model=TINY_NAME, messages=MESSAGES, **GREEDY)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == TINY_MAX_LEN - prompt_tokens(http)


def test_max_completion_tokens(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=TINY_NAME, messages=MESSAGES, max_completion_tokens=3, **GREEDY
    )
    assert r.usage.completion_tokens == 3


def test_content_parts_and_roles(client: openai.OpenAI, http) -> None:
    parts = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is the capital"},
                                     {"type": "text", "text": "of France?"}]},
    ]  # fmt: skip
    r = client.chat.completions.create(model=TINY_NAME, messages=parts, max_tokens=2, **GREEDY)
    assert r.usage.prompt_tokens == prompt_tokens(http, parts)
    as_text = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital\nof France?"},
    ]
    assert r.usage.prompt_tokens == prompt_tokens(http, as_text)


def test_a_reply_holding_the_nul_byte_token_can_be_sent_back(http, tiny_model_dir) -> None:
    # The server refuses NUL in request bodies, so a reply in which the model sampled the
    # byte 0x00 must come out as U+FFFD, or the client's next turn would be a 400.
    [nul] = Tokenizer(tiny_model_dir).encode("\x00", add_special_tokens=False)
    forced = {"max_tokens": 3, "ignore_eos": True, "logit_bias": {str(nul): 100}}
    r = http.post("/v1/chat/completions", json={"messages": MESSAGES, **forced})
    reply = r.json()["choices"][0]["message"]["content"]
    assert reply == "\ufffd" * 3
    turns = [*MESSAGES, {"role": "assistant", "content": reply}, {"role": "user", "content": "Hm?"}]
    again = http.post("/v1/chat/completions", json={"messages": turns, "max_tokens": 2})
    assert again.status_code == 200, again.text
