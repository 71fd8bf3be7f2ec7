"""Chunked prefill: a long prompt is computed a chunk per prefill step, between decode steps of
the running sequences, to the same tokens and logits as in one piece."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from helpers.engine import Driver

from glassbox.engine.sequence import STEERING_ABORT, SamplingParams, Sequence, SequenceStatus
from glassbox.steering.plan import (
    Direction,
    ResolvedCondition,
    ResolvedEdit,
    ResolvedGroup,
    ResolvedScope,
    SteeringPlan,
)

CHUNK = 8
LONG = [(7 * i + 3) % 300 + 10 for i in range(50)]  # 50 tokens: 7 chunks of 8


def _greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, **kw)


@dataclass
class Step:
    is_prefill: bool
    seq_ids: set[int]
    tokens: int  # tokens the forward pass computed


class _CountingModel:
    """The engine's model, counting the tokens of each forward pass."""

    def __init__(self, model, steps: list[Step]):
        self._model, self._steps = model, steps

    def forward(self, input_ids, *args, **kwargs):
        self._steps[-1].tokens = input_ids.numel()
        return self._model.forward(input_ids, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


def _record(engine, monkeypatch) -> list[Step]:
    steps: list[Step] = []
    run = engine.runner.run

    def recording_run(seqs, is_prefill, *args, **kwargs):
        steps.append(Step(is_prefill, {s.seq_id for s in seqs}, 0))
        return run(seqs, is_prefill, *args, **kwargs)

    monkeypatch.setattr(engine.runner, "run", recording_run)
    monkeypatch.setattr(engine.runner, "model", _CountingModel(engine.runner.model, steps))
    return steps


def test_a_long_prompt_is_prefilled_a_chunk_at_a_time_between_decode_steps(
    make_engine, monkeypatch
):
    engine = make_engine(prefill_chunk_tokens=CHUNK)
    steps = _record(engine, monkeypatch)
    first = engine.add_request(LONG, _greedy(40))
    engine.step()
    # Nothing was decoding: the whole prompt in one step (max_num_batched_tokens).
    assert steps[0] == Step(True, {first.seq_id}, len(LONG))
    other = engine.add_request([4, 5, 6], _greedy(40))
    engine.step()  # decode first
    engine.step()  # prefill other
    engine.step()  # decode both
    steps.clear()
    arrived = engine.add_request(LONG[::-1], _greedy(3))
    silent_steps = 0  # steps before `arrived` gets its first token
    while arrived.num_output_tokens == 0:
        outs = engine.step()
        silent_steps += 1
        if arrived.num_output_tokens == 0:
            assert arrived.seq_id not in {o.seq_id for o in outs}  # no output mid-prompt
            assert 0 < arrived.num_computed_tokens < len(LONG)
            assert arrived.status == SequenceStatus.RUNNING  # it holds its blocks
    assert silent_steps == 2 * 7 - 1  # 7 chunks, a decode step between two of them

    running = {first.seq_id, other.seq_id}
    prefills = [s for s in steps if s.is_prefill]
    assert [s.tokens for s in prefills] == [8] * 6 + [2]
    assert all(s.seq_ids == {arrived.seq_id} for s in prefills)
    # Between two decode steps of the running sequences: at most one chunk of prefill.
    since_decode = 0
    for s in steps:
        if s.is_prefill:
            since_decode += s.tokens
            assert since_decode <= CHUNK
        else:
            assert running <= s.seq_ids
            since_decode = 0
    while engine.has_work():
        engine.step()
    assert engine.block_manager.num_used == 0


def _run(engine, prompts, params, first_step=None):
    """Per prompt: its new tokens, their logprobs and their top alternatives."""
    seqs = [engine.add_request(p, sp) for p, sp in zip(prompts, params, strict=True)]
    if first_step is not None:
        first_step(engine.step(), seqs)
    lps: dict[int, list] = {s.seq_id: [] for s in seqs}
    while engine.has_work():
        for o in engine.step():
            lps[o.seq_id] += o.logprobs
    return [
        (s.output_token_ids, [lp.logprob for lp in lps[s.seq_id]], [lp.top for lp in lps[s.seq_id]])
        for s in seqs
    ]


def _assert_same(got, expected):
    for (tokens, lps, tops), (ref_tokens, ref_lps, ref_tops) in zip(got, expected, strict=True):
        assert tokens == ref_tokens
        assert len(lps) == len(tokens)
        torch.testing.assert_close(torch.tensor(lps), torch.tensor(ref_lps), atol=1e-5, rtol=0)
        assert [[t for t, _ in top] for top in tops] == [[t for t, _ in top] for top in ref_tops]


def test_chunks_give_the_tokens_and_logprobs_of_one_piece(make_engine):
    """Chunks of 7 (never on a block boundary of 4), the tail of one prompt sharing a step
    with the start of the next; greedy and seeded sampling alike."""
    prompts = [LONG[:45], LONG[10:22], LONG[30:33]]
    params = [
        _greedy(8, logprobs=3),
        SamplingParams(max_tokens=8, temperature=0.9, seed=11, ignore_eos=True, logprobs=3),
        _greedy(8, logprobs=3),
    ]

    def first_step(outputs, seqs):
        assert outputs == []  # the first 7 tokens of the first prompt: no token yet
        assert [s.num_computed_tokens for s in seqs] == [7, 0, 0]

    whole = _run(make_engine(), prompts, params)
    chunked = _run(
        make_engine(max_num_batched_tokens=7, prefill_chunk_tokens=7), prompts, params, first_step
    )
    _assert_same(chunked, whole)


def test_the_runner_computes_a_chunk_and_its_hook_sees_the_chunk_rows(tiny_model):
    """The forward pass of a prefill in two chunks: the residual stream the hook sees and
    the last logits are those of one pass over the whole prompt."""
    prompt = LONG[:19]

    def capture(store: list):
        def hook(layer, h):
            if layer == 1:
                store.append(h.clone())
            return h

        return hook

    whole: list = []
    _, ref_logits = Driver(tiny_model).prefill([prompt], hook=capture(whole))

    driver = Driver(tiny_model)
    seq = Sequence(prompt, SamplingParams(), driver.block_size)
    driver.block_manager.allocate(seq, register=False)
    chunks: list = []
    seq.num_scheduled_tokens = 10
    logits, _ = driver.runner.run([seq], True, capture(chunks))
    assert logits.shape[0] == 0  # no row has all its tokens yet
    seq.num_computed_tokens, seq.num_scheduled_tokens = 10, None
    logits, _ = driver.runner.run([seq], True, capture(chunks))
    assert [c.shape[0] for c in chunks] == [10, 9]
    torch.testing.assert_close(torch.cat(chunks), whole[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)


def _direction(hidden: int, layer: int, seed: int) -> Direction:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(hidden, generator=g)
    write = 2.0 * w / w.norm()
    return Direction(f"d{seed}", layer, read=write / 4.0, read_bias=0.0, write=write)


def test_a_chunked_prompt_under_a_steering_plan_gives_the_one_piece_result(make_engine):
    """A nudge everywhere and a conditional edit (gated per token) on a prompt prefilled in
    chunks, next to an unsteered prompt in the same steps: each row's plan reaches exactly
    its own tokens."""
    hidden = make_engine().model.config.hidden_size
    cond, edit = _direction(hidden, 0, 21), _direction(hidden, 1, 22)
    scope = ResolvedScope(
        0,
        ResolvedGroup("&", (ResolvedCondition(cond, ">", 0.0),)),
        (ResolvedEdit(cond, "nudge", 1.5),),
        abort=False,
    )
    plan = SteeringPlan([ResolvedEdit(edit, "nudge", 2.0)], [scope])
    prompts = [LONG[:30], LONG[20:41]]
    params = [_greedy(8, steering=plan, logprobs=0), _greedy(8, logprobs=0)]

    def first_step(outputs, seqs):
        assert outputs == [] and [s.num_computed_tokens for s in seqs] == [9, 0]

    whole = _run(make_engine(), prompts, params)
    engine = make_engine(max_num_batched_tokens=9, prefill_chunk_tokens=9)
    chunked = _run(engine, prompts, params, first_step)
    _assert_same(chunked, whole)
    unsteered = make_engine().generate([prompts[0]], _greedy(8))[0]["token_ids"]
    assert chunked[0][0] != unsteered  # the plan does change the first prompt's tokens


def test_an_abort_scope_that_holds_in_a_chunk_ends_the_prompt_there(make_engine):
    hidden = make_engine().model.config.hidden_size
    d = _direction(hidden, 0, 23)
    always = ResolvedScope(0, ResolvedGroup("|", (ResolvedCondition(d, ">", -1e9),)), (), True)
    engine = make_engine(max_num_batched_tokens=9, prefill_chunk_tokens=9)
    seq = engine.add_request(LONG[:30], _greedy(5, steering=SteeringPlan([], [always])))
    [out] = engine.step()  # its first chunk
    assert (out.seq_id, out.finish_reason, out.token_ids) == (seq.seq_id, STEERING_ABORT, [])
    assert out.abort_scope == 0 and seq.is_finished
    assert not engine.has_work() and engine.block_manager.num_used == 0


def test_aborting_a_half_prefilled_sequence_frees_its_blocks(make_engine):
    engine = make_engine(prefill_chunk_tokens=CHUNK)
    decoding = engine.add_request([4, 5, 6], _greedy(30))
    engine.step()
    engine.step()
    held = engine.block_manager.num_used
    seq = engine.add_request(LONG, _greedy(5))
    engine.step()  # its first chunk
    assert seq.num_computed_tokens == CHUNK and engine.block_manager.num_used > held
    out = engine.abort(seq.seq_id)
    assert out is not None and out.finish_reason == "abort" and out.token_ids == []
    assert seq.is_finished and seq.block_table == []
    assert engine.block_manager.num_used == held
    assert seq not in engine.scheduler.prefilling and not engine.scheduler.waiting
    # Blocks it never computed did not enter the prefix cache: the same prompt, now,
    # gives the one-piece result.
    again = engine.add_request(LONG, _greedy(5))
    while engine.has_work():
        engine.step()
    assert again.output_token_ids == make_engine().generate([LONG], _greedy(5))[0]["token_ids"]
    assert decoding.num_output_tokens == 30 and engine.block_manager.num_used == 0


def test_a_state_made_mid_prefill_does_not_read_blocks_not_computed_yet(make_engine):
    """The blocks of a prompt half way through its chunks enter the prefix cache only as
    they are computed: a KV state of the same prompt made between two chunks shares the
    computed ones and computes the rest."""
    engine = make_engine(prefill_chunk_tokens=CHUNK)
    engine.add_request([4, 5, 6], _greedy(40))
    engine.step()
    engine.step()
    first = engine.add_request(LONG, _greedy(5))
    engine.step()  # first's first chunk: 2 of its blocks computed
    assert first.num_computed_tokens == CHUNK
    cached = engine.stats.prefix_cached_tokens
    hits = engine.block_manager.prefix_hits
    handle = engine.prefill_kv(LONG)
    assert engine.block_manager.prefix_hits - hits == 2
    second = engine.add_request(LONG, _greedy(5), handle)
    while engine.has_work():
        engine.step()
    expected = make_engine().generate([LONG], _greedy(5))[0]["token_ids"]
    assert first.output_token_ids == expected and second.output_token_ids == expected
    assert engine.stats.prefix_cached_tokens > cached


def test_a_half_prefilled_sequence_is_preempted_and_recomputed(make_engine, monkeypatch):
    """A decoding sequence needs a block while a long prompt, half prefilled, holds the rest
    of the pool: the prompt gives its blocks back, starts again later and ends unchanged
    (its blocks still cached when it comes back are those it had computed, no others)."""
    engine = make_engine(num_blocks=12, prefill_chunk_tokens=4)
    decoding = engine.add_request([4, 5, 6], _greedy(8))  # 3 blocks by its end
    engine.step()
    engine.step()
    long = engine.add_request(LONG[:40], _greedy(4))  # 10 blocks
    seen: list[tuple[int, int]] = []  # (num_computed_tokens, blocks) of `long` when preempted
    preempt = engine.scheduler.preempt

    def recording_preempt(seq):
        if seq is long:
            seen.append((seq.num_computed_tokens, len(seq.block_table)))
        preempt(seq)

    monkeypatch.setattr(engine.scheduler, "preempt", recording_preempt)
    while engine.has_work():
        engine.step()
    assert seen and 0 < seen[0][0] < 40 and seen[0][1] == 10  # mid-prefill
    fresh = make_engine()
    ref = fresh.generate([[4, 5, 6], LONG[:40]], [_greedy(8), _greedy(4)])
    assert decoding.output_token_ids == ref[0]["token_ids"]
    assert long.output_token_ids == ref[1]["token_ids"]
    assert engine.block_manager.num_used == 0


def test_a_continued_state_is_chunked_from_its_end_and_keeps_its_kv(make_engine):
    """A KV state continued with a long new part (prefilled in chunks of 5 from the state's
    end) and kept at the end: the same tokens and the same KV as in one piece."""
    results = []
    for budget in (1000, 5):
        engine = make_engine(max_num_batched_tokens=budget, prefill_chunk_tokens=budget)
        handle = engine.prefill_kv(LONG[:13])  # the KV of 12 tokens
        seq = engine.add_request(LONG[:40], _greedy(4, keep_kv=True), handle)
        outs = engine.step()
        if budget == 5:
            assert outs == [] and seq.num_computed_tokens == 17
        while engine.has_work():
            outs += engine.step()
        kv = outs[-1].kv
        assert kv is not None and kv.token_ids == tuple(seq.token_ids)
        results.append((seq.output_token_ids, engine.read_kv(kv)))
        engine.block_manager.release(kv)
        assert engine.block_manager.num_used == 0
    (ref_tokens, ref_kv), (tokens, kv) = results
    assert tokens == ref_tokens
    torch.testing.assert_close(kv, ref_kv, atol=1e-5, rtol=0)
