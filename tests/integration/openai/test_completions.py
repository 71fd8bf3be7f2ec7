"""/v1/completions: string, batch and token-id prompts, legacy logprobs, echo, streaming."""

from __future__ import annotations

import openai
from helpers.server import TINY_NAME

PROMPT = "Once upon a time"
GREEDY = {"temperature": 0.0, "extra_body": {"ignore_eos": True}}


def ids_of(http, text: str) -> list[int]:
    return http.post("/tokenize", json={"prompt": text}).json()["tokens"]


def test_completion_text_and_usage(client: openai.OpenAI, http) -> None:
    r = client.completions.create(model=TINY_NAME, prompt=PROMPT, max_tokens=7, **GREEDY)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    [choice] = r.choices
    assert choice.text and choice.finish_reason == "length"
    assert r.usage.prompt_tokens == len(ids_of(http, PROMPT))
    assert r.usage.completion_tokens == 7


def test_token_id_prompt_equals_text_prompt(client: openai.OpenAI, http) -> None:
    by_text = client.completions.create(model=TINY_NAME, prompt=PROMPT, max_tokens=6, **GREEDY)
    by_ids = client.completions.create(
        model=TINY_NAME, prompt=ids_of(http, PROMPT), max_tokens=6, **GREEDY
    )
    assert by_ids.choices[0].text == by_text.choices[0].text


def test_batch_of_prompts(client: openai.OpenAI, http) -> None:
    prompts = [PROMPT, "Hello world"]
    single = [
        client.completions.create(model=TINY_NAME, prompt=p, max_tokens=5, **GREEDY).choices[0].text
        for p in prompts
    ]
    r = client.completions.create(model=TINY_NAME, prompt=prompts, max_tokens=5, **GREEDY)
    assert [c.index for c in r.choices] == [0, 1]
    assert [c.text for c in r.choices] == single
    assert r.usage.prompt_tokens == sum(len(ids_of(http, p)) for p in prompts)
    as_ids = client.completions.create(
        model=TINY_NAME, prompt=[ids_of(http, p) for p in prompts], max_tokens=5, **GREEDY
    )
    assert [c.text for c in as_ids.choices] == single


def test_legacy_logprobs(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model=TINY_NAME, prompt=PROMPT, max_tokens=5, logprobs=3, **GREEDY
    )
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset[0] == 0
    for i in range(1, 5):
        assert lp.text_offset[i] == lp.text_offset[i - 1] + len(lp.tokens[i - 1])
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert 3 <= len(top) <= 4 and top[token] == logprob
        assert logprob == max(top.values())  # greedy


def test_echo_prepends_the_prompt(client: openai.OpenAI) -> None:
    plain = client.completions.create(model=TINY_NAME, prompt=PROMPT, max_tokens=4, **GREEDY)
    echoed = client.completions.create(
        model=TINY_NAME, prompt=PROMPT, max_tokens=4, echo=True, **GREEDY
    )
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text


def test_completion_stream(client: openai.OpenAI) -> None:
    plain = client.completions.create(model=TINY_NAME, prompt=PROMPT, max_tokens=8, **GREEDY)
    chunks = list(
        client.completions.create(
            model=TINY_NAME, prompt=PROMPT, max_tokens=8, stream=True,
            stream_options={"include_usage": True}, **GREEDY,
        )
    )  # fmt: skip
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 8


def test_completion_n_with_seed(client: openai.OpenAI) -> None:
    kw = {"model": TINY_NAME, "prompt": PROMPT, "max_tokens": 8, "temperature": 1.0}
    r = client.completions.create(n=3, seed=11, **kw)
    texts = [c.text for c in r.choices]
    assert len(set(texts)) == 3
    assert client.completions.create(seed=12, **kw).choices[0].text == texts[1]
