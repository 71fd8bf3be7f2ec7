"""KV handles: computed KV kept, shared, continued from, copied out and loaded back."""

from __future__ import annotations

import pytest
import torch

from glassbox.engine.errors import RequestRejected
from glassbox.engine.llm_engine import LLMEngine
from glassbox.engine.sequence import SamplingParams

PROMPT = [5, 17, 3, 99, 42, 7, 8, 61, 23, 11]  # 10 tokens: KV of 9 = 2 full blocks + 1


def _run(engine: LLMEngine, prompt, params, prefix=None) -> dict:
    seq = engine.add_request(list(prompt), params, prefix)
    out = {"token_ids": [], "kv": None}
    while engine.has_work():
        for o in engine.step():
            if o.seq_id == seq.seq_id:
                out["token_ids"] += o.token_ids
                if o.finish_reason:
                    out["kv"] = o.kv
    return out


def _greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, **kw)


def _seeded(n: int, seed: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=1.0, seed=seed, ignore_eos=True)


def test_continuing_from_a_handle_computes_only_the_last_token(engine):
    cold = _run(engine, PROMPT, _greedy(8))["token_ids"]
    handle = engine.prefill_kv(PROMPT)
    assert handle.num_kv == len(PROMPT) - 1 and len(handle.block_ids) == 3
    before = engine.stats.prompt_tokens
    warm = _run(engine, PROMPT, _greedy(8), engine.block_manager.share(handle))
    assert warm["token_ids"] == cold
    # the prefill step of the continuation counted the prompt, but computed one token
    seq_cached = engine.stats.prefix_cached_tokens
    assert seq_cached >= len(PROMPT) - 1
    assert engine.stats.prompt_tokens - before == len(PROMPT)
    engine.block_manager.release(handle)


def test_share_costs_no_blocks_and_release_frees_everything(engine):
    bm = engine.block_manager
    free0 = bm.num_free
    handle = engine.prefill_kv(PROMPT)
    assert bm.num_free == free0 - 3
    fork = bm.share(handle)
    assert fork.block_ids == handle.block_ids and bm.num_free == free0 - 3
    assert all(bm.blocks[b].ref_count == 2 for b in handle.block_ids)
    head = bm.share(handle, 5)  # KV of 4 tokens: the first block only
    assert head.block_ids == handle.block_ids[:1] and head.num_kv == 4
    for h in (handle, fork, head):
        bm.release(h)
    assert bm.num_free == free0


def test_continuations_copy_the_partial_block_and_leave_the_state_intact(engine):
    handle = engine.prefill_kv(PROMPT)
    kv_before = engine.read_kv(handle)
    first = _run(engine, PROMPT, _seeded(12, 1), engine.block_manager.share(handle))
    # two branches at once, both writing after the state's last token
    bm = engine.block_manager
    a = engine.add_request(PROMPT, _seeded(12, 2), bm.share(handle))
    b = engine.add_request(PROMPT, _seeded(12, 3), bm.share(handle))
    assert a.block_table == [] and b.block_table == []
    engine.step()  # both prefill: full blocks shared, the partial last one copied
    assert a.block_table[:2] == b.block_table[:2] == list(handle.block_ids[:2])
    assert a.block_table[2] != b.block_table[2] != handle.block_ids[2]
    while engine.has_work():
        engine.step()
    assert torch.equal(engine.read_kv(handle), kv_before)
    again = _run(engine, PROMPT, _seeded(12, 1), bm.share(handle))
    assert again["token_ids"] == first["token_ids"]
    bm.release(handle)


def test_kept_kv_continues_where_generation_stopped(engine):
    whole = _run(engine, PROMPT, _greedy(10))["token_ids"]
    part = _run(engine, PROMPT, _greedy(4, keep_kv=True))
    child = part["kv"]
    assert child is not None and list(child.token_ids) == PROMPT + part["token_ids"]
    rest = _run(engine, list(child.token_ids), _greedy(6), child)
    assert part["token_ids"] + rest["token_ids"] == whole


def test_aborted_sequences_keep_nothing(engine):
    free0 = engine.block_manager.num_free
    seq = engine.add_request(PROMPT, _greedy(10, keep_kv=True))
    engine.step()
    assert engine.abort(seq.seq_id).kv is None
    assert engine.block_manager.num_free == free0


def test_kv_read_and_loaded_back_continues_identically(make_engine):
    one = make_engine()
    handle = one.prefill_kv(PROMPT)
    kv = one.read_kv(handle)
    assert kv.shape == (2, len(PROMPT) - 1, *one.runner.kv_cache[0].shape[2:])
    expected = _run(one, PROMPT, _seeded(10, 7), one.block_manager.share(handle))["token_ids"]

    two = make_engine()
    two.prefill_kv([1, 2, 3, 4, 5, 6])  # other blocks in use: the KV lands elsewhere
    loaded = two.load_kv(PROMPT, kv)
    assert loaded.block_ids != handle.block_ids
    assert torch.equal(two.read_kv(loaded), kv)
    assert _run(two, PROMPT, _seeded(10, 7), loaded)["token_ids"] == expected


def test_bad_prefixes_and_kv_are_refused_and_release_the_lease(engine):
    bm = engine.block_manager
    handle = engine.prefill_kv(PROMPT)
    free0 = bm.num_free
    with pytest.raises(RequestRejected, match="start with"):
        engine.add_request([1, 2, 3] + PROMPT, _greedy(2), bm.share(handle))
    assert all(bm.blocks[b].ref_count == 1 for b in handle.block_ids)
    with pytest.raises(RequestRejected, match="does not fit"):
        engine.load_kv(PROMPT, torch.zeros(2, 3, 1, 1))
    assert bm.num_free == free0
    bm.release(handle)


def test_prefill_kv_extends_a_prefix_and_reuses_its_blocks(engine):
    bm = engine.block_manager
    base = engine.prefill_kv(PROMPT)
    longer = PROMPT + [70, 71, 72, 73, 74]
    ext = engine.prefill_kv(longer, prefix=base)
    assert ext.block_ids[:2] == base.block_ids[:2]
    fresh = _run(engine, longer, _greedy(5))["token_ids"]
    assert _run(engine, longer, _greedy(5), ext)["token_ids"] == fresh
    bm.release(base)


def test_a_continued_state_joins_the_decode_batch(engine):
    """Its one token to compute is a decode step: no prefill runs, and the text does not
    depend on what else is in the batch."""
    handle = engine.prefill_kv(PROMPT)
    alone = _run(engine, PROMPT, _seeded(6, 4), engine.block_manager.share(handle))
    other = engine.add_request([9, 8, 7, 6, 5], _seeded(20, 1))
    engine.step()  # the other sequence's prefill
    steps = []
    run = engine.runner.run

    def recording_run(seqs, is_prefill, *args, **kwargs):
        steps.append((is_prefill, {s.seq_id for s in seqs}))
        return run(seqs, is_prefill, *args, **kwargs)

    engine.runner.run = recording_run
    seq = engine.add_request(PROMPT, _seeded(6, 4), engine.block_manager.share(handle))
    tokens = []
    while engine.has_work():
        for o in engine.step():
            if o.seq_id == seq.seq_id:
                tokens += o.token_ids
    assert steps[0] == (False, {other.seq_id, seq.seq_id})
    assert not any(is_prefill for is_prefill, _ in steps)
    assert tokens == alone["token_ids"]
    engine.block_manager.release(handle)
