"""The sampling extras over HTTP, on /v1/chat/completions and /v1/completions: top_k, min_p,
repetition/presence/frequency penalties, logit_bias, stop_token_ids and skip_special_tokens.

Each test shows the option moving the output the documented way. Greedy decoding
(`temperature: 0`) is deterministic; the reported logprobs are the model's own distribution
(before penalties, bias and filters), so they say what an option had to overcome.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import httpx
import pytest
from helpers.server import LiveServer

ENDPOINTS = ["chat", "completions"]
CHAT_MESSAGES = [{"role": "user", "content": "Hello world"}]
COMPLETION_PROMPT = "Hello world"
EOS = "<|im_end|>"


@dataclass
class Out:
    text: str
    finish_reason: str
    completion_tokens: int
    tokens: list[str]  # each generated token's text
    logprobs: list[float]  # each generated token's logprob under the model
    tops: list[list[tuple[str, float]]]  # the most likely tokens at each step


def generate(http: httpx.Client, endpoint: str, top: int = 5, **fields) -> Out:
    """One choice from `endpoint` ("chat" or "completions") with logprobs (`top`
    alternatives per step; at most 5 on completions)."""
    if endpoint == "chat":
        body = {"messages": CHAT_MESSAGES, "logprobs": True, "top_logprobs": top, **fields}
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        content = choice["logprobs"]["content"]
        tokens = [t["token"] for t in content]
        logprobs = [t["logprob"] for t in content]
        tops = [[(a["token"], a["logprob"]) for a in t["top_logprobs"]] for t in content]
        text = choice["message"]["content"]
    else:
        body = {"prompt": COMPLETION_PROMPT, "logprobs": min(top, 5), **fields}
        r = http.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        lp = choice["logprobs"]
        tokens, logprobs = lp["tokens"], lp["token_logprobs"]
        tops = [list(t.items()) for t in lp["top_logprobs"]]
        text = choice["text"]
    usage = r.json()["usage"]["completion_tokens"]
    return Out(text, choice["finish_reason"], usage, tokens, logprobs, tops)


def prompt_texts(http: httpx.Client, endpoint: str, server: LiveServer) -> list[str]:
    """The texts of the prompt's tokens (the chat template's included)."""
    body = {"messages": CHAT_MESSAGES} if endpoint == "chat" else {"prompt": COMPLETION_PROMPT}
    ids = http.post("/tokenize", json=body).json()["tokens"]
    return [server.engine.tokenizer.token_str(i) for i in ids]


def repeats(tokens: list[str]) -> int:
    """Generated tokens that were generated before."""
    return len(tokens) - len(set(tokens))


@pytest.fixture(scope="module")
def vocab(tiny_server: LiveServer) -> dict[str, int]:
    """Token text -> id for the tokens whose text no other token shares."""
    tok = tiny_server.engine.tokenizer
    texts = [tok.token_str(i) for i in range(tiny_server.engine.vocab_size)]
    counts = Counter(texts)
    return {t: i for i, t in enumerate(texts) if counts[t] == 1}


@pytest.fixture(scope="module")
def unambiguous(tiny_server: LiveServer, vocab: dict[str, int]) -> dict[str, float]:
    """A logit_bias banning every token whose text another token shares (single bytes of
    multi-byte characters all read "\ufffd"), so the generated texts name their token ids."""
    known = set(vocab.values())
    return {str(i): -100.0 for i in range(tiny_server.engine.vocab_size) if i not in known}


# --- top_k and min_p ----------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_top_k_one_is_greedy_and_a_larger_top_k_samples_within_it(http, endpoint) -> None:
    n = 24
    greedy = generate(http, endpoint, temperature=0, max_tokens=n, ignore_eos=True)
    top1 = generate(http, endpoint, temperature=1, seed=7, top_k=1, max_tokens=n, ignore_eos=True)
    assert top1.text == greedy.text and top1.tokens == greedy.tokens
    assert top1.logprobs == pytest.approx(greedy.logprobs, abs=1e-4)

    top3 = generate(http, endpoint, temperature=1, seed=7, top_k=3, max_tokens=n, ignore_eos=True)
    free = generate(http, endpoint, temperature=1, seed=7, top_k=0, max_tokens=n, ignore_eos=True)
    assert top3.text != greedy.text  # top_k=3 lets other tokens through
    if endpoint == "chat":  # (the legacy shape keys alternatives by text: "\ufffd" collide)
        ranks3 = [rank(lp, t) for lp, t in zip(top3.logprobs, top3.tops, strict=True)]
        assert max(ranks3) == 3  # every token among the 3 most likely, not only the first
        ranks_free = [rank(lp, t) for lp, t in zip(free.logprobs, free.tops, strict=True)]
        assert max(ranks_free) > 3  # without top_k, tokens outside the top 3 are drawn too


def rank(logprob: float, top: list[tuple[str, float]]) -> int:
    """1 + how many listed alternatives are more likely than the chosen token (len(top) + 1
    when it is not among them)."""
    values = sorted((v for _, v in top), reverse=True)
    if logprob not in values:
        return len(values) + 1
    return values.index(logprob) + 1


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_min_p_near_one_is_greedy_and_a_smaller_min_p_keeps_likely_tokens(http, endpoint) -> None:
    n = 24
    greedy = generate(http, endpoint, temperature=0, max_tokens=n, ignore_eos=True)
    strict = generate(
        http, endpoint, temperature=1, seed=3, min_p=0.999, max_tokens=n, ignore_eos=True
    )
    assert strict.text == greedy.text

    free = generate(http, endpoint, temperature=1, seed=0, max_tokens=n, ignore_eos=True)
    loose = generate(
        http, endpoint, temperature=1, seed=0, min_p=0.5, max_tokens=n, ignore_eos=True
    )
    assert loose.text not in (greedy.text, free.text)
    if endpoint == "chat":  # (the legacy shape keys alternatives by text: "\ufffd" collide)

        def ratio(lp: float, top: list[tuple[str, float]]) -> float:
            return math.exp(lp - max(v for _, v in top))  # p(token) / p(most likely token)

        assert min(ratio(lp, t) for lp, t in zip(loose.logprobs, loose.tops, strict=True)) >= 0.5
        assert min(ratio(lp, t) for lp, t in zip(free.logprobs, free.tops, strict=True)) < 0.5


# --- penalties ----------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_repetition_penalty_changes_a_repeating_greedy_output(
    http, endpoint, unambiguous, tiny_server
) -> None:
    n = 24
    base = {"temperature": 0, "max_tokens": n, "ignore_eos": True, "logit_bias": unambiguous}
    greedy = generate(http, endpoint, **base)
    assert repeats(greedy.tokens) >= 4  # the tiny model loops on its own tokens
    penalized = generate(http, endpoint, repetition_penalty=1.5, **base)
    assert penalized.text != greedy.text
    assert repeats(penalized.tokens) < repeats(greedy.tokens)
    # The first difference: greedy took a token it had already seen, the penalty refused it.
    i = next(
        i for i, (a, b) in enumerate(zip(greedy.tokens, penalized.tokens, strict=True)) if a != b
    )
    assert greedy.tokens[i] in prompt_texts(http, endpoint, tiny_server) + greedy.tokens[:i]
    assert penalized.logprobs[i] < greedy.logprobs[i]  # a less likely, unrepeated token

    encouraged = generate(http, endpoint, repetition_penalty=0.5, **base)  # < 1 favours repeats
    assert repeats(encouraged.tokens) > repeats(greedy.tokens)


def check_penalized_greedy(out: Out, presence: float, frequency: float, banned: set[str]) -> None:
    """Every token is the best of its step after the OpenAI penalties: a token generated c
    times before loses c * frequency + presence (when c > 0) from its logit."""
    for i, (chosen, logprob, top) in enumerate(
        zip(out.tokens, out.logprobs, out.tops, strict=True)
    ):
        counts = Counter(out.tokens[:i])

        def score(token: str, lp: float, counts: Counter = counts) -> float:
            c = counts[token]
            return lp - c * frequency - (presence if c else 0.0)

        best = max(score(t, lp) for t, lp in top if t not in banned)
        assert score(chosen, logprob) == pytest.approx(best, abs=1e-5), (i, chosen, top)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("penalty", ["presence_penalty", "frequency_penalty"])
def test_presence_and_frequency_penalties_lower_generated_tokens(
    http, endpoint, penalty, unambiguous, tiny_server
) -> None:
    n = 24
    base = {"temperature": 0, "max_tokens": n, "ignore_eos": True, "logit_bias": unambiguous}
    greedy = generate(http, endpoint, top=20, **base)
    penalized = generate(http, endpoint, top=20, **{penalty: 1.0}, **base)
    assert penalized.text != greedy.text
    assert repeats(penalized.tokens) < repeats(greedy.tokens)
    tok = tiny_server.engine.tokenizer
    banned = {tok.token_str(int(i)) for i in unambiguous}
    if endpoint == "chat":  # 20 alternatives per step: enough to name each step's best
        presence = 1.0 if penalty == "presence_penalty" else 0.0
        frequency = 1.0 if penalty == "frequency_penalty" else 0.0
        check_penalized_greedy(penalized, presence, frequency, banned)
    # The first difference: greedy repeated a generated token, the penalty took another.
    i = next(
        i for i, (a, b) in enumerate(zip(greedy.tokens, penalized.tokens, strict=True)) if a != b
    )
    assert greedy.tokens[i] in greedy.tokens[:i]
    assert penalized.tokens[i] not in penalized.tokens[:i]

    # A negative penalty rewards repeating.
    rewarded = generate(http, endpoint, top=20, **{penalty: -2.0}, **base)
    assert repeats(rewarded.tokens) > repeats(greedy.tokens)


def test_penalties_count_generated_tokens_only(http, unambiguous, vocab) -> None:
    """presence/frequency penalties look at the completion only, repetition_penalty at the
    prompt too: after a prompt that ends with the greedy answer's first token, the presence
    and frequency penalties keep that token and the repetition penalty refuses it."""
    base = {"temperature": 0, "max_tokens": 1, "ignore_eos": True, "logit_bias": unambiguous}
    first = generate(http, "completions", **base).tokens[0]
    ids = http.post("/tokenize", json={"prompt": COMPLETION_PROMPT}).json()["tokens"]
    prompt = [*ids, vocab[first]]
    assert generate(http, "completions", prompt=prompt, **base).tokens == [first]
    for penalty in ({"presence_penalty": 2.0}, {"frequency_penalty": 2.0}):
        assert generate(http, "completions", prompt=prompt, **penalty, **base).tokens == [first]
    repetition = generate(http, "completions", prompt=prompt, repetition_penalty=2.0, **base)
    assert repetition.tokens != [first]


# --- logit_bias, stop_token_ids, skip_special_tokens ----------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_logit_bias_forces_and_bans_tokens(http, endpoint, vocab, unambiguous) -> None:
    forced = vocab[" over"]
    out = generate(
        http, endpoint, temperature=0, max_tokens=4, logit_bias={str(forced): 100}, ignore_eos=True
    )
    assert out.text == " over" * 4 and out.tokens == [" over"] * 4
    sampled = generate(
        http, endpoint, temperature=1, seed=5, max_tokens=4, logit_bias={str(forced): 100}
    )
    assert sampled.text == " over" * 4

    base = {"temperature": 0, "max_tokens": 1, "ignore_eos": True}
    greedy = generate(http, endpoint, top=5, logit_bias=unambiguous, **base)
    first = greedy.tokens[0]
    bias = {**unambiguous, str(vocab[first]): -100}
    banned = generate(http, endpoint, top=5, logit_bias=bias, **base)
    assert banned.tokens[0] != first
    # ... and the next best token takes its place.
    ranked = sorted(greedy.tops[0], key=lambda t: -t[1])
    skip = {first} | {t for t, _ in ranked if t not in vocab or str(vocab[t]) in unambiguous}
    assert banned.tokens[0] == next(t for t, _ in ranked if t not in skip)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_stop_token_ids_end_generation_without_the_token(http, endpoint, vocab, unambiguous):
    base = {"temperature": 0, "max_tokens": 16, "ignore_eos": True, "logit_bias": unambiguous}
    greedy = generate(http, endpoint, **base)
    assert greedy.finish_reason == "length"
    j = greedy.tokens.index(greedy.tokens[4])  # the first time the 5th token was generated
    stop_id = vocab[greedy.tokens[j]]
    stopped = generate(http, endpoint, stop_token_ids=[stop_id], **base)
    assert stopped.finish_reason == "stop"
    assert stopped.text == "".join(greedy.tokens[:j])
    assert stopped.tokens == greedy.tokens[: j + 1]  # generated (and counted), not shown
    assert stopped.completion_tokens == j + 1


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_skip_special_tokens_false_keeps_them_in_the_text(http, endpoint, vocab) -> None:
    eos = {str(vocab[EOS]): 100}
    base = {"temperature": 0, "max_tokens": 3, "logit_bias": eos}
    kept = generate(http, endpoint, ignore_eos=True, skip_special_tokens=False, **base)
    assert kept.text == EOS * 3 and kept.finish_reason == "length"
    skipped = generate(http, endpoint, ignore_eos=True, **base)  # skip_special_tokens defaults on
    assert skipped.text == "" and skipped.finish_reason == "length"
    assert skipped.tokens == [EOS] * 3  # generated all the same
    # Without ignore_eos the forced EOS ends the generation at once, kept out of the text.
    ended = generate(http, endpoint, skip_special_tokens=False, **base)
    assert ended.finish_reason == "stop" and ended.text == "" and ended.completion_tokens == 1
