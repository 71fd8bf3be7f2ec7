"""Paged KV blocks: reference counts, prefix hashing and reuse, preemption."""

from __future__ import annotations

import pytest
import torch

from glassbox.engine.block_manager import BlockManager
from glassbox.engine.errors import OutOfBlocks
from glassbox.engine.sequence import SamplingParams, Sequence
from glassbox.steering.plan import Direction, ResolvedEdit, SteeringPlan

BS = 4
GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


def _seq(ids: list[int]) -> Sequence:
    return Sequence(ids, SamplingParams(), BS)


def test_allocate_and_free_keep_reference_counts():
    bm = BlockManager(8, BS)
    seq = _seq(list(range(10)))  # 3 blocks: 4 + 4 + 2
    bm.allocate(seq)
    assert len(seq.block_table) == 3
    assert bm.num_used == 3 and bm.num_free == 5
    assert [bm.blocks[b].ref_count for b in seq.block_table] == [1, 1, 1]
    table = list(seq.block_table)
    bm.free_sequence(seq)
    assert bm.num_used == 0 and seq.block_table == []
    assert [bm.blocks[b].ref_count for b in table] == [0, 0, 0]


def test_same_prefix_shares_full_blocks():
    bm = BlockManager(16, BS)
    a = _seq(list(range(10)))
    bm.allocate(a)
    b = _seq(list(range(8)) + [50, 51, 52])
    hits = bm.prefix_hits
    bm.allocate(b)
    assert b.num_cached_tokens == 8 and b.num_computed_tokens == 8
    assert bm.prefix_hits == hits + 2
    assert b.block_table[:2] == a.block_table[:2]
    assert b.block_table[2] != a.block_table[2]
    assert [bm.blocks[i].ref_count for i in a.block_table] == [2, 2, 1]
    bm.free_sequence(a)
    assert [bm.blocks[i].ref_count for i in b.block_table] == [1, 1, 1]
    bm.free_sequence(b)
    assert bm.num_used == 0


def test_block_holding_the_last_prompt_token_is_never_taken_from_the_cache():
    bm = BlockManager(16, BS)
    prompt = list(range(12))  # exactly three full blocks
    a = _seq(prompt)
    bm.allocate(a)
    b = _seq(prompt)
    bm.allocate(b)
    # Blocks 0 and 1 are shared; block 2 holds the last token, whose logits must be computed.
    assert b.num_cached_tokens == 8
    assert b.num_computed_tokens < len(b)
    assert b.block_table[:2] == a.block_table[:2]
    assert b.block_table[2] != a.block_table[2]


def test_freed_blocks_stay_hittable_until_reused():
    bm = BlockManager(6, BS)
    prompt = list(range(9))
    a = _seq(prompt)
    bm.allocate(a)
    bm.free_sequence(a)
    b = _seq(prompt)
    bm.allocate(b)
    assert b.num_cached_tokens == 8  # a's blocks were free but kept their contents
    bm.free_sequence(b)
    # Fill the pool with other tokens: the cached blocks are handed out and forgotten.
    filler = _seq(list(range(100, 124)))
    bm.allocate(filler)
    bm.free_sequence(filler)
    c = _seq(prompt)
    bm.allocate(c)
    assert c.num_cached_tokens == 0


def test_blocks_filled_while_decoding_are_registered(engine):
    prompt = [5, 6, 7, 8, 9, 10]
    out = engine.generate([prompt], GREEDY)[0]
    # A new prompt that continues the first one's output reuses the decoded blocks too.
    longer = prompt + out["token_ids"][:8]  # 14 tokens: three full blocks before the last
    seq = engine.add_request(longer, GREEDY)
    engine.step()
    assert seq.num_cached_tokens == 12


def test_repeated_prompt_hits_the_cache_and_gives_the_same_output(engine):
    prompt = list(range(3, 22))  # 19 tokens: 4 full blocks reusable
    first = engine.generate([prompt], GREEDY)[0]
    hits = engine.block_manager.prefix_hits
    seq = engine.add_request(prompt, GREEDY)
    outs = []
    while engine.has_work():
        outs += engine.step()
    assert outs[0].num_cached_tokens == 16
    assert engine.block_manager.prefix_hits == hits + 4
    assert [t for o in outs for t in o.token_ids] == first["token_ids"]
    assert seq.is_finished
    assert engine.block_manager.num_used == 0


def test_concurrent_sequences_share_prefix_blocks(engine):
    prefix = list(range(40, 56))  # four full blocks
    a = engine.add_request(prefix + [1, 2], GREEDY)
    engine.step()  # prefill a
    b = engine.add_request(prefix + [3], GREEDY)
    engine.step()  # decode a: a running sequence gets a step after every prefill step
    engine.step()  # prefill b against a's live blocks
    assert b.num_cached_tokens == 16
    assert b.block_table[:4] == a.block_table[:4]
    assert all(engine.block_manager.blocks[i].ref_count == 2 for i in a.block_table[:4])
    while engine.has_work():
        engine.step()
    assert engine.block_manager.num_used == 0


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True),
        SamplingParams(max_tokens=20, seed=5, ignore_eos=True, frequency_penalty=0.5),
    ],
    ids=["greedy", "seeded-with-penalty"],
)
def test_out_of_blocks_preempts_and_the_preempted_sequence_completes_unchanged(make_engine, params):
    prompts = [list(range(10, 18)), list(range(60, 68)), list(range(90, 98))]
    expected = make_engine().generate(prompts, params)

    # 3 sequences x 28 tokens need 21 blocks of 4; the pool has 12.
    small = make_engine(num_blocks=12)
    preempted: list[int] = []
    original = small.scheduler.preempt

    def counting_preempt(seq):
        preempted.append(seq.seq_id)
        original(seq)

    small.scheduler.preempt = counting_preempt
    got = small.generate(prompts, params)
    assert preempted, "the small pool should have forced a preemption"
    assert [g["token_ids"] for g in got] == [e["token_ids"] for e in expected]
    assert [g["finish_reason"] for g in got] == ["length"] * 3
    assert small.block_manager.num_used == 0


def test_steered_kv_never_enters_or_comes_from_the_prefix_cache(engine):
    """KV computed under a variant is not what the plain model computes: a steered run
    must not leave blocks that an unsteered one reuses, nor reuse the plain model's."""
    hidden = engine.model.config.hidden_size
    write = torch.randn(hidden, generator=torch.Generator().manual_seed(1)) * 4
    direction = Direction("d", 0, read=write / 4, read_bias=0.0, write=write)
    plan = SteeringPlan([ResolvedEdit(direction, "nudge", 2.0)])
    steered = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, steering=plan)
    prompt = list(range(3, 22))
    cold = engine.generate([prompt], GREEDY)[0]["token_ids"]
    hits = engine.block_manager.prefix_hits
    engine.generate([prompt], steered)  # the plain model's blocks are cached now
    assert engine.block_manager.prefix_hits == hits

    fresh = engine.block_manager.__class__(engine.block_manager.num_blocks, BS)
    engine.block_manager = engine.scheduler.block_manager = fresh  # an empty cache
    engine.generate([prompt], steered)
    assert fresh.hash_to_block == {}
    assert engine.generate([prompt], GREEDY)[0]["token_ids"] == cold


def test_a_new_pool_is_all_free_and_unreferenced_and_counts_no_hits():
    bm = BlockManager(4, BS)
    assert bm.num_free == 4 and bm.num_used == 0
    assert [b.ref_count for b in bm.blocks] == [0, 0, 0, 0]
    assert bm.prefix_hits == 0


def test_blocks_filled_while_decoding_are_registered_from_the_first_one():
    """may_append registers each block as the token completing it is appended, chained
    from the start of the sequence: a later prompt with those tokens reuses them."""
    bm = BlockManager(4, BS)
    a = _seq([1, 2, 3])  # one partial block: nothing registered yet
    bm.allocate(a)
    assert bm.hash_to_block == {}
    for t in [4, 5, 6, 7, 8]:
        a.append(t)
        bm.may_append(a)
    assert len(a.block_table) == 2 and bm.num_used == 2
    b = _seq([1, 2, 3, 4, 5, 6, 7, 8, 9])
    bm.allocate(b)
    assert b.num_cached_tokens == 8
    assert b.block_table[:2] == a.block_table
    assert bm.prefix_hits == 2


def test_the_least_recently_freed_cached_block_is_evicted_first():
    bm = BlockManager(4, BS)
    a = _seq([1, 2, 3, 4, 5])
    b = _seq([11, 12, 13, 14, 15])
    bm.allocate(a)
    bm.allocate(b)
    bm.free_sequence(a)  # freed first: its cached block goes first
    bm.free_sequence(b)
    bm.allocate(_seq([21, 22, 23, 24, 25]))  # takes two of the four free blocks
    b_again = _seq([11, 12, 13, 14, 16])
    bm.allocate(b_again)
    assert b_again.num_cached_tokens == 4  # b's prefix survived
    bm.free_sequence(b_again)
    a_again = _seq([1, 2, 3, 4, 6])
    bm.allocate(a_again)
    assert a_again.num_cached_tokens == 0  # a's was handed out


def test_an_evicted_block_leaves_the_cache_even_if_the_same_tokens_refill_it():
    """A block handed out again must no longer answer for its old prefix, even when its
    new owner writes the same tokens there after a different prefix (other KV)."""
    bm = BlockManager(2, BS)
    t, p = [1, 2, 3, 4], [9, 8, 7, 6]
    a = _seq(t + [5])
    bm.allocate(a)
    bm.free_sequence(a)
    b = _seq(p + t)  # takes both blocks: t's block now holds t after p
    bm.allocate(b)
    assert b.num_cached_tokens == 0
    bm.free_sequence(b)
    c = _seq(t + [6])
    bm.allocate(c)
    assert c.num_cached_tokens == 0
    assert bm.prefix_hits == 0


def test_a_prefix_registered_twice_stays_cached_when_the_older_copy_is_evicted():
    bm = BlockManager(4, BS)
    t = [1, 2, 3, 4]
    a = _seq(t + [5])
    bm.allocate(a)
    b = _seq(t + [5])
    bm.allocate(b, use_cache=False)  # computed again (a capture): registered again
    assert b.num_cached_tokens == 0 and b.block_table[0] != a.block_table[0]
    copy = b.block_table[0]
    bm.free_sequence(a)
    bm.free_sequence(b)
    bm.allocate(_seq([21, 22, 23, 24, 25]))  # evicts a's two blocks, the oldest freed
    d = _seq(t + [6])
    bm.allocate(d)
    assert d.num_cached_tokens == 4 and d.block_table[0] == copy


def test_after_a_cache_miss_no_later_block_is_taken_from_the_cache():
    """A cached block is only valid after the KV of every block before it: once one
    misses, the rest are computed even if the later blocks are still cached."""
    bm = BlockManager(8, BS)
    t1, t2 = [1, 2, 3, 4], [5, 6, 7, 8]
    a = _seq(t1 + t2 + [9])
    bm.allocate(a)
    # A capture recomputes t1 and registers it anew; that copy is then evicted, so t1 is
    # no longer cached while a's block for t2 (after t1) still is.
    c = _seq(t1 + [10])
    bm.allocate(c, use_cache=False)
    bm.free_sequence(c)
    bm.allocate(_seq(list(range(100, 120))))  # the five free blocks, c's among them
    bm.free_sequence(a)
    hits = bm.prefix_hits
    e = _seq(t1 + t2 + [11])
    bm.allocate(e)
    assert e.num_cached_tokens == 0 and e.num_computed_tokens == 0
    assert a.block_table == [] and bm.prefix_hits == hits
    assert bm.blocks[e.block_table[1]].token_ids == tuple(t2)


def test_can_allocate_counts_exactly_the_blocks_needed():
    bm = BlockManager(3, BS)
    assert bm.can_allocate(_seq(list(range(12))))  # three blocks: the whole pool
    assert not bm.can_allocate(_seq(list(range(13))))


def test_continuing_from_a_handle_needs_and_takes_only_the_blocks_after_it():
    bm = BlockManager(3, BS)
    prompt = list(range(9))
    a = _seq(prompt)
    bm.allocate(a)
    handle = bm.hold(prompt, a.block_table)  # KV of 8 tokens: two full blocks
    bm.free_sequence(a)
    assert bm.num_free == 1
    seq = Sequence(prompt + [20, 21, 22], SamplingParams(), BS, prefix=handle)  # 3 blocks
    assert bm.can_allocate(seq)  # the two shared blocks cost nothing
    bm.allocate(seq)
    assert seq.block_table[:2] == list(handle.block_ids) and len(seq.block_table) == 3
    assert [bm.blocks[b].ref_count for b in seq.block_table] == [2, 2, 1]
    assert seq.num_computed_tokens == 8 and bm.num_free == 0
    bm.free_sequence(seq)
    bm.release(handle)
    assert bm.num_free == 3 and all(b.ref_count == 0 for b in bm.blocks)


def test_a_released_handle_cannot_be_shared_again():
    bm = BlockManager(4, BS)
    a = _seq(list(range(6)))
    bm.allocate(a)
    handle = bm.hold(a.token_ids, a.block_table)
    bm.free_sequence(a)
    bm.release(handle)
    with pytest.raises(AssertionError):
        bm.share(handle)


def test_take_blocks_takes_the_whole_pool_and_no_more():
    bm = BlockManager(3, BS)
    assert len(bm.take_blocks(3)) == 3 and bm.num_free == 0
    with pytest.raises(OutOfBlocks, match="0 free blocks, 1 needed"):
        bm.take_blocks(1)


def test_can_append_needs_a_free_block_only_when_the_token_starts_one():
    bm = BlockManager(3, BS)
    a, b = _seq([1, 2, 3, 4]), _seq([5, 6, 7, 8])
    bm.allocate(a)
    bm.allocate(b)
    a.append(9)  # starts a second block: the last free one is enough
    assert bm.num_free == 1 and bm.can_append(a)
    bm.may_append(a)
    assert len(a.block_table) == 2 and bm.num_free == 0
    b.append(9)  # needs a block, none left
    assert not bm.can_append(b)
    a.append(10)  # fits in a's second block
    assert bm.can_append(a)
    bm.may_append(a)
    assert len(a.block_table) == 2
