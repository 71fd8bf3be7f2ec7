"""The prefix cache holds a block only under a hash chain from the first token of its
sequence, and only KV the plain model computed for those tokens at those positions.

KV restored into the pool (`load_kv` / `take_blocks`: a state imported, or spilled and read
back) and KV computed under steering are never hashed; a sequence that continues from them
must not register what it computes after them as if it started a prompt, nor register a
copy of their partial last block."""

from __future__ import annotations

import torch

from glassbox.engine.block_manager import BlockManager, KVHandle
from glassbox.engine.llm_engine import LLMEngine
from glassbox.engine.sequence import SamplingParams, Sequence
from glassbox.steering.plan import Direction, ResolvedEdit, SteeringPlan

BS = 4
STATE = [5, 17, 3, 99, 42, 7, 8, 61, 23]  # 9 tokens: KV of 8 = exactly two full blocks


def _greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, **kw)


def _run(engine: LLMEngine, prompt, params, prefix=None):
    """The sequence's tokens (prompt and output) and its last output."""
    seq = engine.add_request(list(prompt), params, prefix)
    last = None
    while engine.has_work():
        for o in engine.step():
            if o.seq_id == seq.seq_id:
                last = o
    return seq.token_ids, last


def _first_token(engine: LLMEngine, prompt):
    """How many of the prompt's tokens came from the prefix cache, and the logprobs of the
    top tokens after it."""
    _, out = _run(engine, prompt, _greedy(1, logprobs=8))
    top = out.logprobs[0].top
    return out.num_cached_tokens, [t for t, _ in top], torch.tensor([lp for _, lp in top])


def _assert_same_logits(got, expected):
    assert got[1] == expected[1]
    torch.testing.assert_close(got[2], expected[2], atol=1e-5, rtol=0)


def _steering(engine: LLMEngine) -> SteeringPlan:
    hidden = engine.model.config.hidden_size
    write = torch.randn(hidden, generator=torch.Generator().manual_seed(1)) * 4
    direction = Direction("d", 0, read=write / 4, read_bias=0.0, write=write)
    return SteeringPlan([ResolvedEdit(direction, "nudge", 2.0)])


def test_blocks_decoded_after_taken_blocks_are_not_registered_as_a_first_block():
    """take_blocks' blocks hold KV loaded from elsewhere and have no hash: the blocks a
    continuation fills after them have no valid chain, so they stay out of the cache."""
    bm = BlockManager(8, BS)
    handle = KVHandle(tuple(STATE), tuple(bm.take_blocks(2)))
    seq = Sequence(STATE, SamplingParams(), BS, prefix=handle)
    bm.allocate(seq)
    for t in [30, 31, 32, 33, 34, 35, 36, 37]:  # fills blocks 2 and 3
        seq.append(t)
        bm.may_append(seq)
    assert len(seq.block_table) == 5
    assert bm.hash_to_block == {}
    probe = Sequence(seq.token_ids[8:16] + [1], SamplingParams(), BS)
    bm.allocate(probe)
    assert probe.num_cached_tokens == 0 and bm.prefix_hits == 0


def test_a_loaded_state_continued_past_a_block_boundary_leaves_no_misplaced_kv(make_engine):
    """The repro: a state read back with load_kv, continued by decoding until two blocks
    fill; a new prompt starting with those blocks' tokens must compute them at its own
    positions, not reuse KV computed at positions 8..15."""
    one = make_engine()
    kv = one.read_kv(one.prefill_kv(STATE))

    two = make_engine()
    loaded = two.load_kv(STATE, kv)
    tokens, _ = _run(two, STATE, _greedy(8), loaded)
    assert len(tokens) == 17  # blocks 2 and 3 filled while decoding
    assert two.block_manager.hash_to_block == {}

    probe = tokens[8:16] + [2]
    got = _first_token(two, probe)
    assert got[0] == 0
    _assert_same_logits(got, _first_token(make_engine(), probe))


def test_a_reloaded_state_shorter_than_a_block_is_not_cached_when_a_continuation_fills_it(
    make_engine,
):
    """Block 0 of a continuation copies the loaded partial block: its chain is valid (it is
    the first block) but its first KV came from the file, which need not be the plain
    model's (here: a steered state's, spilled and read back)."""
    one = make_engine()
    prompt = [5, 17]
    child = _run(one, prompt, _greedy(1, steering=_steering(one), keep_kv=True))[1].kv
    assert child.num_kv == 2
    kv = one.read_kv(child)
    assert not torch.allclose(kv, one.read_kv(one.prefill_kv(list(child.token_ids))))

    two = make_engine()
    loaded = two.load_kv(list(child.token_ids), kv)
    tokens, _ = _run(two, list(child.token_ids), _greedy(3), loaded)
    assert len(tokens) == 6  # block 0 filled while decoding
    assert two.block_manager.hash_to_block == {}

    probe = tokens[:4] + [2]
    got = _first_token(two, probe)
    assert got[0] == 0
    _assert_same_logits(got, _first_token(make_engine(), probe))


def test_a_plain_continuation_of_a_steered_state_caches_only_the_plain_blocks(make_engine):
    """A steered continuation of a plain state writes steered KV into its copy of the
    state's partial block; continuing that plainly and filling the block must not cache
    it after the plain block before it (whose hash chain is valid)."""
    engine = make_engine()
    base = engine.prefill_kv([5, 17, 3, 99, 42, 7])  # KV of 5: block 0 cached, 1 partial
    bm = engine.block_manager
    steered = _greedy(1, steering=_steering(engine), keep_kv=True)
    child = _run(engine, list(base.token_ids), steered, bm.share(base))[1].kv
    assert child.num_kv == 6 and child.block_ids[0] == base.block_ids[0]
    tokens, _ = _run(engine, list(child.token_ids), _greedy(3), child)
    assert len(tokens) == 10  # block 1 filled while decoding

    probe = tokens[:8] + [2]
    got = _first_token(engine, probe)
    assert got[0] == 4  # block 0 only
    _assert_same_logits(got, _first_token(make_engine(), probe))
    bm.release(base)


def test_a_plain_state_continued_past_block_boundaries_is_reused_with_the_same_logits(
    make_engine,
):
    """What stays: the blocks a plain state's continuation fills (its copy of the state's
    partial block included) are cached after the state's own, and a prompt that starts
    with them reuses them to the logits of computing it from scratch."""
    engine = make_engine()
    prompt = [5, 17, 3, 99, 42, 7, 8, 61, 23, 11]  # KV of 9: two full blocks and one
    handle = engine.prefill_kv(prompt)
    tokens, _ = _run(engine, prompt, _greedy(7), handle)
    assert len(tokens) == 17  # blocks 2 (the copy) and 3 filled while decoding

    probe = tokens[:16] + [2]
    got = _first_token(engine, probe)
    assert got[0] == 16
    _assert_same_logits(got, _first_token(make_engine(), probe))


def test_a_continuation_with_more_prompt_does_not_cache_blocks_after_unhashed_ones(
    make_engine,
):
    """The prompt tokens a continuation adds after its state are computed but not
    registered; a block it then fills while decoding has no hashed predecessor and must
    not be registered as a first block."""
    engine = make_engine()
    prompt = [5, 17, 3, 99, 42]  # KV of 4: block 0 cached
    handle = engine.prefill_kv(prompt)
    longer = prompt + [70, 71, 72, 73, 74, 75, 76]  # blocks 1 and 2 computed, unregistered
    tokens, _ = _run(engine, longer, _greedy(5), handle)
    assert len(tokens) == 17  # block 3 filled while decoding

    probe = tokens[12:16] + [2]
    got = _first_token(engine, probe)
    assert got[0] == 0
    _assert_same_logits(got, _first_token(make_engine(), probe))
