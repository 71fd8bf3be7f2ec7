"""Per-row sampling: greedy, filters, penalties, logit bias, seeds and logprobs."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from glassbox.engine.llm_engine import EngineConfig, LLMEngine
from glassbox.engine.sampler import TOP_P_CANDIDATES, Sampler, _filter, apply_penalties
from glassbox.engine.sequence import GREEDY_BELOW, SamplingParams, Sequence
from glassbox.models.llama import LlamaModel

# probabilities 0.5, 0.3, 0.15, 0.05 over a 4-token vocabulary
PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])
LOGITS = PROBS.log()


def _seq(prompt=(0,), outputs=(), **params) -> Sequence:
    seq = Sequence(list(prompt), SamplingParams(**params), block_size=4)
    for t in outputs:
        seq.append(t)
    return seq


def _draw(logits: torch.Tensor, n: int, **params) -> Counter:
    """n tokens sampled from the same logits by one seeded sequence."""
    sampler = Sampler()
    seq = _seq(seed=1234, **params)
    counts: Counter = Counter()
    for _ in range(n):
        (tok,), _ = sampler(logits[None].clone(), [seq])
        counts[tok] += 1
    return counts


def test_temperature_zero_is_argmax():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    seqs = [_seq(temperature=0.0) for _ in range(6)]
    tokens, _ = Sampler()(logits, seqs)
    assert tokens == logits.argmax(-1).tolist()


def test_top_k_one_is_greedy():
    logits = torch.randn(50, generator=torch.Generator().manual_seed(1))
    counts = _draw(logits, 50, temperature=1.5, top_k=1)
    assert counts == Counter({int(logits.argmax()): 50})


def test_logit_bias_forces_a_token():
    counts = _draw(LOGITS, 50, temperature=1.0, logit_bias={3: 100.0})
    assert counts == Counter({3: 50})
    # and a large negative bias bans the greedy choice
    (tok,), _ = Sampler()(LOGITS[None].clone(), [_seq(temperature=0.0, logit_bias={0: -100.0})])
    assert tok == 1


def test_min_p_masks_tokens_below_the_fraction_of_the_top_probability():
    counts = _draw(LOGITS, 2000, temperature=1.0, min_p=0.2)  # threshold 0.2 * 0.5 = 0.1
    assert set(counts) == {0, 1, 2}
    unmasked = _draw(LOGITS, 2000, temperature=1.0)
    assert unmasked[3] > 0


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    assert set(_draw(LOGITS, 2000, temperature=1.0, top_p=0.8)) == {0, 1}
    assert set(_draw(LOGITS, 2000, temperature=1.0, top_p=0.81)) == {0, 1, 2}
    assert set(_draw(LOGITS, 500, temperature=1.0, top_p=0.1)) == {0}


def test_sampled_frequencies_follow_the_temperature():
    counts = _draw(LOGITS, 4000, temperature=1.0)
    freq = torch.tensor([counts[i] / 4000 for i in range(4)])
    assert torch.allclose(freq, PROBS, atol=0.03)
    # temperature 0.5 squares the odds: p ~ probs^2
    sharp = PROBS**2 / (PROBS**2).sum()
    counts = _draw(LOGITS, 4000, temperature=0.5)
    freq = torch.tensor([counts[i] / 4000 for i in range(4)])
    assert torch.allclose(freq, sharp, atol=0.03)


def test_presence_and_frequency_penalties_follow_openai():
    """logit[t] -= frequency * count(t) + presence * (count(t) > 0), generated tokens only."""
    logits = torch.zeros(8)
    seq = _seq(prompt=[1, 2], outputs=[3, 3, 4], presence_penalty=0.5, frequency_penalty=0.25)
    out = apply_penalties(logits.clone(), seq)
    expected = torch.zeros(8)
    expected[3] = -(2 * 0.25 + 0.5)
    expected[4] = -(1 * 0.25 + 0.5)
    assert torch.equal(out, expected)  # prompt tokens 1 and 2 are untouched


def test_repetition_penalty_follows_hf():
    """HF: a seen token's logit is divided by the penalty when positive, multiplied when
    negative; prompt and generated tokens alike."""
    logits = torch.tensor([2.0, -2.0, 2.0, -2.0, 1.0])
    seq = _seq(prompt=[0, 1], outputs=[2], repetition_penalty=2.0)
    out = apply_penalties(logits.clone(), seq)
    assert torch.equal(out, torch.tensor([1.0, -4.0, 1.0, -2.0, 1.0]))


def test_penalties_change_the_greedy_choice():
    logits = torch.tensor([[3.0, 2.5, 0.0]])
    plain = _seq(outputs=[0], temperature=0.0)
    penalized = _seq(outputs=[0], temperature=0.0, frequency_penalty=1.0)
    assert Sampler()(logits.clone(), [plain])[0] == [0]
    assert Sampler()(logits.clone(), [penalized])[0] == [1]
    # The sampler works on a copy: the batch's logits are not modified in place.
    batch = logits.clone()
    Sampler()(batch, [penalized])
    assert torch.equal(batch, logits)


def _run(engine, prompt, params):
    return engine.generate([prompt], params)[0]["token_ids"]


def test_same_seed_same_tokens_different_seeds_differ(make_engine):
    prompt = [5, 6, 7, 8]

    def sampled(seed):
        return _run(
            make_engine(), prompt, SamplingParams(max_tokens=24, seed=seed, ignore_eos=True)
        )

    assert sampled(7) == sampled(7)
    assert sampled(7) != sampled(8)


def test_seeded_request_is_the_same_alone_and_batched(make_engine):
    prompt = [11, 12, 13, 14, 15]
    params = SamplingParams(max_tokens=24, seed=99, ignore_eos=True, top_p=0.95)
    alone = _run(make_engine(), prompt, params)

    engine = make_engine()
    others = [
        ([1, 2, 3], SamplingParams(max_tokens=30, seed=1, ignore_eos=True)),
        ([20, 21, 22, 23, 24, 25, 26], SamplingParams(max_tokens=10, ignore_eos=True)),
    ]
    engine.add_request(*others[0])
    engine.step()
    engine.step()  # the seeded request joins a batch that is already decoding
    seeded = engine.add_request(prompt, params)
    engine.add_request(*others[1])
    while engine.has_work():
        engine.step()
    assert seeded.output_token_ids == alone


@pytest.mark.parametrize("k", [0, 1, 5])
def test_logprobs_top_list_is_sorted_and_consistent(engine, k):
    prompt = [3, 4, 5, 6]
    params = SamplingParams(max_tokens=8, temperature=1.0, seed=3, logprobs=k, ignore_eos=True)
    seq = engine.add_request(prompt, params)
    infos = []
    while engine.has_work():
        for out in engine.step():
            infos += out.logprobs
    assert len(infos) == 8
    for info, tok in zip(infos, seq.output_token_ids, strict=True):
        assert info.token_id == tok
        assert info.logprob <= 0.0
        assert len(info.top) == k
        values = [lp for _, lp in info.top]
        assert values == sorted(values, reverse=True)
        assert sum(math.exp(lp) for lp in values) <= 1.0 + 1e-5
        top = dict(info.top)
        if tok in top:
            assert top[tok] == pytest.approx(info.logprob, abs=1e-6)
        elif k:
            assert info.logprob <= values[-1] + 1e-6


def test_logprobs_are_the_raw_model_log_softmax():
    logits = torch.tensor([[1.0, 2.0, 3.0, 0.5]])
    seq = _seq(temperature=0.0, logprobs=2, frequency_penalty=2.0, outputs=[2])
    (tok,), (info,) = Sampler()(logits.clone(), [seq])
    raw = torch.log_softmax(logits[0], -1)
    assert tok == 1  # the penalty moved the choice away from token 2 ...
    assert info.logprob == pytest.approx(float(raw[1]))  # ... but logprobs are unpenalized
    assert [t for t, _ in info.top] == [2, 1]


def test_repetition_penalty_divides_small_positive_logits_too():
    logits = torch.tensor([0.5, -0.5, 1.0, 3.0])
    seq = _seq(prompt=[0, 1, 2], repetition_penalty=2.0)
    out = apply_penalties(logits.clone(), seq)
    assert torch.equal(out, torch.tensor([0.25, -1.0, 0.5, 3.0]))


def test_logit_bias_is_added_to_the_logit():
    logits = torch.tensor([[3.0, 2.5, 0.0]])
    (tok,), _ = Sampler()(logits.clone(), [_seq(temperature=0.0, logit_bias={1: 1.0})])
    assert tok == 1  # 2.5 + 1.0 beats 3.0
    (tok,), _ = Sampler()(logits.clone(), [_seq(temperature=0.0, logit_bias={2: 2.9})])
    assert tok == 0  # 0.0 + 2.9 does not


def test_min_p_one_keeps_every_token_tied_for_the_top():
    logits = torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert set(_draw(logits, 200, temperature=1.0, min_p=1.0)) == {0, 1}


def test_top_p_stops_at_the_token_whose_mass_reaches_it_exactly():
    # four equally likely tokens (1/4 each, exact): two of them reach 0.5
    counts = _draw(torch.zeros(4), 400, temperature=1.0, top_p=0.5)
    assert len(counts) == 2


def test_a_temperature_too_small_to_divide_by_samples_greedily():
    """logits / 1e-39 would overflow to inf and the probabilities to NaN: temperatures below
    GREEDY_BELOW take the argmax."""
    logits = torch.tensor([[3.0, 1.0, -2.0, 0.5]])
    for temperature in (1e-39, 1e-6):
        (tok,), _ = Sampler()(logits.clone(), [_seq(temperature=temperature, seed=1)])
        assert tok == 0
    # Just above it, the row still samples (seeded; token 1 has probability e^-2e5 ~ 0).
    (tok,), _ = Sampler()(logits.clone(), [_seq(temperature=GREEDY_BELOW * 2, seed=1)])
    assert tok == 0 and SamplingParams(temperature=GREEDY_BELOW * 2).greedy is False


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_decode_logits_are_bitwise_the_same_alone_and_batched(tiny_dir, tiny_tokenizer, fmt):
    """With the quantized kernels a row's logits do not depend on its batch, to the bit.
    Alone, a sequence's blocks are consecutive and attention reads the pool in place; in a
    batch they are gathered (and padded): the values must not differ either. (float32
    matmuls differ in the last bits between one row and several.)"""
    model = LlamaModel.load(tiny_dir, fmt, "kernel")
    config = EngineConfig(block_size=4, num_blocks=64, max_num_seqs=8, max_model_len=128)
    prompt = list(range(30, 47))
    params = SamplingParams(max_tokens=12, temperature=0.0, logprobs=3, ignore_eos=True)

    def logprobs(engine, seq, steps: int | None = None) -> list:
        out = []
        while engine.has_work() and steps != 0:
            out += [info for o in engine.step() if o.seq_id == seq.seq_id for info in o.logprobs]
            steps = None if steps is None else steps - 1
        return [(i.logprob, i.top) for i in out]

    engine = LLMEngine(model, tiny_tokenizer, config)
    seq = engine.add_request(prompt, params)
    alone = logprobs(engine, seq, steps=1)  # the prefill
    assert engine.runner._prepare_decode([seq])[2].first_block is not None
    alone += logprobs(engine, seq)
    assert len(alone) == 12

    engine = LLMEngine(model, tiny_tokenizer, config)
    engine.add_request([5, 6, 7, 8, 9, 10], SamplingParams(max_tokens=20, ignore_eos=True))
    engine.step()
    engine.step()
    seq = engine.add_request(prompt, params)
    assert logprobs(engine, seq) == alone


@pytest.mark.parametrize("spread", [0.3, 3.0])  # flat (the fallback sort) and peaked
@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.999])
def test_top_p_keeps_exactly_the_nucleus(spread, top_p):
    logits = torch.randn(50_000, generator=torch.Generator().manual_seed(5)) * spread
    probs = torch.softmax(logits, dim=-1)
    ordered, order = torch.sort(probs, descending=True)
    nucleus = set(order[(ordered.cumsum(-1) - ordered) < top_p].tolist())
    kept = torch.isfinite(_filter(logits, 0, top_p, 0.0)).nonzero().view(-1).tolist()
    assert set(kept) == nucleus
    # both ways are taken: a nucleus within the candidates, and one that needs the sort
    assert (len(nucleus) < TOP_P_CANDIDATES) == (spread == 3.0 and top_p == 0.5)
