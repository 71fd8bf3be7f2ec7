"""Continuous batching: requests join and leave the decode batch between steps."""

from __future__ import annotations

import pytest

from glassbox.engine.block_manager import BlockManager
from glassbox.engine.errors import PromptTooLong, RequestRejected
from glassbox.engine.scheduler import Scheduler
from glassbox.engine.sequence import SamplingParams, Sequence, SequenceStatus


def _params(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


def test_request_joins_between_decode_steps_and_finished_ones_leave(engine):
    a = engine.add_request([1, 2, 3, 4, 5], _params(6))
    batches: list[list[int]] = []

    def step():
        outs = engine.step()
        batches.append(sorted(o.seq_id for o in outs))
        return outs

    step()  # prefill a
    step()  # decode a
    b = engine.add_request([7, 8, 9], _params(8))
    step()  # b is prefilled on its own; a waits one step
    step()  # decode: both
    assert batches == [[a.seq_id], [a.seq_id], [b.seq_id], sorted([a.seq_id, b.seq_id])]
    assert len(engine.scheduler.running) == 2
    while engine.has_work():
        step()
    # a (6 tokens) finished first and left; b's last steps ran alone.
    assert batches[-1] == [b.seq_id]
    assert [a.seq_id] not in batches[4:]
    assert a.finish_reason == "length" and b.finish_reason == "length"
    assert a.num_output_tokens == 6 and b.num_output_tokens == 8
    assert not engine.scheduler.running and engine.block_manager.num_used == 0


def test_max_num_seqs_bounds_the_batch(make_engine):
    engine = make_engine(max_num_seqs=2)
    seqs = [engine.add_request([i + 1, i + 2], _params(3)) for i in range(5)]
    sizes = []
    while engine.has_work():
        sizes.append(len(engine.step()))
    assert max(sizes) == 2
    assert all(s.num_output_tokens == 3 for s in seqs)


def test_prefill_respects_the_token_budget(make_engine):
    engine = make_engine(max_num_batched_tokens=10)
    seqs = [engine.add_request(list(range(10 * i + 1, 10 * i + 7)), _params(1)) for i in range(3)]
    first = engine.step()
    # 6 + 6 > 10: the second prompt's first 4 tokens only, the third waits
    assert [o.seq_id for o in first] == [seqs[0].seq_id]
    assert [s.num_computed_tokens for s in seqs[1:]] == [4, 0]


def test_abort_frees_the_sequence_between_steps(engine):
    a = engine.add_request([1, 2, 3], _params(50))
    b = engine.add_request([4, 5, 6], _params(5))
    engine.step()
    engine.step()
    out = engine.abort(a.seq_id)
    assert out is not None and out.finish_reason == "abort"
    outs = engine.step()
    assert [o.seq_id for o in outs] == [b.seq_id]
    while engine.has_work():
        engine.step()
    assert engine.block_manager.num_used == 0


def test_empty_prompt_is_rejected(engine):
    with pytest.raises(RequestRejected, match="empty"):
        engine.add_request([], _params(1))


def test_prompt_longer_than_the_context_is_rejected(make_engine):
    engine = make_engine(num_blocks=8, max_model_len=32)  # the pool holds 32 tokens
    with pytest.raises(PromptTooLong, match="40 tokens"):
        engine.add_request(list(range(1, 41)), _params(5))


def test_a_prompt_that_fits_still_runs_next_to_the_limit(make_engine):
    engine = make_engine(num_blocks=8, max_model_len=32)
    out = engine.generate([list(range(1, 20))], _params(5))[0]
    assert len(out["token_ids"]) == 5 and out["finish_reason"] == "length"


@pytest.mark.parametrize(
    "prompt, params",
    [
        ([1, 2, 10**6], SamplingParams()),
        ([1, 2, 3], SamplingParams(logit_bias={10**6: 1.0})),
        ([1, 2, 3], SamplingParams(logit_bias={-1: 100.0})),
    ],
    ids=["prompt-id", "logit-bias-key", "negative-logit-bias-key"],
)
def test_out_of_vocabulary_token_ids_are_rejected(engine, prompt, params):
    with pytest.raises(RequestRejected, match="outside the vocabulary") as info:
        engine.add_request(prompt, params)
    assert info.value.param == ("prompt" if params.logit_bias == {} else "logit_bias")


def _run_bounded(engine, max_steps: int = 300) -> None:
    for _ in range(max_steps):
        if not engine.has_work():
            return
        engine.step()
    raise AssertionError(f"the engine still has work after {max_steps} steps (livelock)")


def test_context_larger_than_the_pool_cannot_livelock(make_engine):
    engine = make_engine(num_blocks=8, max_model_len=512)  # the pool holds 32 tokens
    with pytest.raises(PromptTooLong):
        engine.add_request(list(range(1, 41)), _params(3))
    seq = engine.add_request(list(range(1, 10)), _params(100))
    _run_bounded(engine)
    assert seq.finish_reason == "length"


BS = 4


def _seq(ids, prefix=None) -> Sequence:
    return Sequence(list(ids), SamplingParams(), BS, prefix)


def test_prefill_admits_prompts_up_to_exactly_the_token_budget():
    sched = Scheduler(BlockManager(32, BS), max_num_seqs=8, max_num_batched_tokens=12)
    seqs = [_seq(range(10 * i, 10 * i + 6)) for i in range(3)]  # 6 tokens each
    for s in seqs:
        sched.add(s)
    batch, is_prefill = sched.schedule()
    assert is_prefill and batch == seqs[:2]  # 6 + 6 = 12 fits; a third would not
    assert [s.status for s in seqs] == [SequenceStatus.RUNNING] * 2 + [SequenceStatus.WAITING]
    assert list(sched.waiting) == seqs[2:]


def test_cached_prompt_tokens_do_not_count_against_the_budget():
    sched = Scheduler(BlockManager(32, BS), max_num_seqs=8, max_num_batched_tokens=20)
    first = _seq(range(16))
    sched.add(first)
    assert sched.schedule() == ([first], True)
    assert sched.schedule() == ([first], False)  # a decode step after a prefill step
    again, other = _seq(range(16)), _seq(range(100, 108))
    sched.add(again)
    sched.add(other)
    batch, is_prefill = sched.schedule()
    assert again.num_cached_tokens == 12  # 4 to compute, + 8: within 20
    assert is_prefill and batch == [again, other]


def test_a_continued_state_joins_the_decode_batch_without_an_extra_block():
    bm = BlockManager(4, BS)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=64)
    first = _seq([1, 2, 3, 4])
    bm.allocate(first)
    handle = bm.hold([1, 2, 3, 4, 5], first.block_table)  # KV of 4 tokens
    bm.free_sequence(first)
    seq = _seq([1, 2, 3, 4, 5], prefix=handle)  # only its last token to compute
    sched.add(seq)
    assert sched.schedule() == ([seq], False)
    assert len(seq.block_table) == 2 and bm.num_used == 2
    assert seq.status == SequenceStatus.RUNNING


def test_out_of_blocks_the_last_running_sequence_is_preempted_and_the_others_decode():
    bm = BlockManager(3, BS)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=64)
    a, b = _seq([1, 2, 3, 4, 5]), _seq([6, 7, 8, 9])  # 2 + 1 blocks: the whole pool
    sched.add(a)
    sched.add(b)
    assert sched.schedule() == ([a, b], True)
    a.append(10)  # fits in a's second block
    b.append(10)  # needs a block: none free, and nobody after b to preempt
    batch, is_prefill = sched.schedule()
    assert (batch, is_prefill) == ([a], False)
    assert list(sched.running) == [a] and list(sched.waiting) == [b]
    assert b.status == SequenceStatus.WAITING and b.block_table == []
    assert bm.num_free == 1


def test_finishing_a_waiting_sequence_removes_it_and_releases_its_prefix():
    bm = BlockManager(4, BS)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=64)
    first = _seq(range(8))
    bm.allocate(first)
    handle = bm.hold(list(range(9)), first.block_table)
    bm.free_sequence(first)
    waiting = _seq(list(range(9)) + [50], prefix=handle)
    other = _seq([60, 61])
    sched.add(waiting)
    sched.add(other)
    sched.finish(waiting, "abort")  # aborted before it ever ran
    assert list(sched.waiting) == [other]
    assert waiting.is_finished and waiting.finish_reason == "abort"
    assert waiting.prefix is None and bm.num_free == 4
    assert sched.schedule() == ([other], True)
