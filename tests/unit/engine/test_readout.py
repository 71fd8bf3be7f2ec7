"""Feature readout during generation: each generated token's top features, read in the
forward pass that sampled it, batched across the rows that ask for it."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from glassbox.engine.readout import FeatureEncoder, Readout, ReadoutHook, top_features
from glassbox.engine.sequence import SamplingParams

PROMPTS = [[5, 17, 33, 8, 41, 2, 19], [3, 9, 27], [12, 40, 7, 7, 1, 30, 22, 9, 11, 4]]


def _encoder(hidden: int, n: int = 24, activation: str = "linear", layer: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, hidden, generator=g) / hidden**0.5
    bias = torch.randn(n, generator=g) * 0.1
    threshold = torch.rand(n, generator=g) * 0.2 if activation == "jumprelu" else None
    top = 6 if activation == "topk" else None
    return FeatureEncoder("test", layer, weight, bias, activation, threshold, top)


def _reference(encoder: FeatureEncoder, h: torch.Tensor, k: int) -> tuple[list[int], list[float]]:
    """One row, the slow way: every activation, sorted."""
    pre = h @ encoder.weight.T + encoder.bias
    if encoder.activation == "relu":
        acts = pre.clamp(min=0)
    elif encoder.activation == "jumprelu":
        acts = torch.where(pre > encoder.threshold, pre.clamp(min=0), torch.zeros_like(pre))
    elif encoder.activation == "topk":
        keep = pre.argsort(descending=True)[: encoder.top]
        acts = torch.zeros_like(pre)
        acts[keep] = pre[keep].clamp(min=0)
    else:
        acts = pre
    order = acts.argsort(descending=True)[:k].tolist()
    fired = [i for i in order if acts[i] != 0]
    return fired, [float(acts[i]) for i in fired]


@pytest.mark.parametrize("activation", ["linear", "relu", "jumprelu", "topk"])
def test_top_features_batched_equals_row_by_row(activation: str) -> None:
    hidden = 16
    encoder = _encoder(hidden, activation=activation)
    h = torch.randn(7, hidden, generator=torch.Generator().manual_seed(1))
    ks = [1, 5, 3, 24, 2, 8, 5]
    found = top_features(encoder, h, ks)
    assert len(found) == len(ks)
    for row, (k, f) in enumerate(zip(ks, found, strict=True)):
        indices, values = _reference(encoder, h[row], k)
        assert f.indices == indices, row
        assert f.activations == pytest.approx(values, abs=1e-5)
        assert len(f.indices) <= k
        assert f.activations == sorted(f.activations, reverse=True)
        if activation != "linear":
            assert all(v > 0 for v in f.activations)  # what does not fire is left out


def test_hook_reads_only_its_rows_and_leaves_h_alone() -> None:
    hidden = 16
    a, b = _encoder(hidden, layer=0, seed=1), _encoder(hidden, n=10, layer=1, seed=2)
    hook = ReadoutHook([Readout(a, 3), None, Readout(b, 2), Readout(a, 1)])
    hook.bind(torch.tensor([4, 1, 0, 2]))  # a prefill: each row's last token
    h0 = torch.randn(5, hidden)
    h1 = torch.randn(5, hidden)
    assert hook(0, h0) is h0 and hook(1, h1) is h1
    out = hook.results()
    assert set(out) == {0, 2, 3}
    _assert_same(out[0], top_features(a, h0[4:5], [3])[0])
    _assert_same(out[3], top_features(a, h0[2:3], [1])[0])
    _assert_same(out[2], top_features(b, h1[0:1], [2])[0])
    assert ReadoutHook.of([None, None]) is None


def _capture_top(engine, ids: list[int], readout: Readout, at: int):
    captured, _ = engine.capture([ids], {readout.encoder.layer})
    h = captured[0][readout.encoder.layer][at : at + 1]
    return top_features(readout.encoder, h, [readout.k])[0]


def _assert_same(found, expected) -> None:
    assert found.indices == expected.indices
    assert found.activations == pytest.approx(expected.activations, rel=1e-4, abs=1e-4)


def _run(engine, prompts, params):
    """Generate; per prompt the token ids and each step's features."""
    order = [engine.add_request(p, sp).seq_id for p, sp in zip(prompts, params, strict=True)]
    tokens = {i: [] for i in order}
    features = {i: [] for i in order}
    while engine.has_work():
        for out in engine.step():
            tokens[out.seq_id] += out.token_ids
            features[out.seq_id] += out.features
    return [tokens[i] for i in order], [features[i] for i in order]


def test_each_token_reads_the_position_it_was_sampled_from(engine, tiny_model) -> None:
    """Token i's readout is the capture's at position len(prompt) - 1 + i: the same residual,
    read by prefill (the first token) and decode steps (the others)."""
    readout = Readout(_encoder(tiny_model.config.hidden_size, layer=1), 5)
    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, readout=readout)
    for _ in range(2):  # the second time, the prompts' blocks come from the prefix cache
        tokens, features = _run(engine, PROMPTS, [params] * len(PROMPTS))
        for prompt, toks, feats in zip(PROMPTS, tokens, features, strict=True):
            assert len(feats) == len(toks) == 6
            ids = prompt + toks[:-1]
            for i, found in enumerate(feats):
                _assert_same(found, _capture_top(engine, ids, readout, len(prompt) - 1 + i))


def test_rows_without_readout_are_unaffected(engine, tiny_model) -> None:
    hidden = tiny_model.config.hidden_size
    a, b = _encoder(hidden, layer=0, seed=3), _encoder(hidden, layer=1, seed=4, activation="relu")
    base = [
        SamplingParams(max_tokens=8, temperature=1.0, seed=s, ignore_eos=True) for s in (1, 2, 3)
    ]
    alone, none = _run(engine, PROMPTS, base)
    assert none == [[], [], []]
    read = [
        base[0],
        replace(base[1], readout=Readout(a, 4)),
        replace(base[2], readout=Readout(b, 2)),
    ]
    mixed, features = _run(engine, PROMPTS, read)
    assert mixed == alone  # the same tokens, with or without readout, for every row
    assert features[0] == [] and len(features[1]) == len(features[2]) == 8


def test_a_chunked_prompt_reads_its_last_chunk(make_engine, tiny_model) -> None:
    """A prompt prefilled in chunks while another sequence decodes gets its first token's
    readout from its last chunk."""
    engine = make_engine(prefill_chunk_tokens=4)
    readout = Readout(_encoder(tiny_model.config.hidden_size, layer=1), 3)
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True, readout=readout)
    engine.add_request(PROMPTS[1], SamplingParams(max_tokens=12, ignore_eos=True))
    engine.step()  # the first sequence decodes from now on
    long = PROMPTS[2] + PROMPTS[0]
    seq = engine.add_request(long, params)
    features, tokens = [], []
    while engine.has_work():
        for out in engine.step():
            if out.seq_id == seq.seq_id:
                features += out.features
                tokens += out.token_ids
    assert len(features) == 4
    _assert_same(features[0], _capture_top(engine, long, readout, len(long) - 1))
    _assert_same(features[3], _capture_top(engine, long + tokens[:3], readout, len(long) + 2))
