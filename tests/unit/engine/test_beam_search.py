"""Beam search from a KV state: same beams and scores as HF `generate(num_beams=...)`,
blocks shared between beams and all released at the end, groups, steering, bad params."""

from __future__ import annotations

import pytest
import torch

from glassbox.engine.beam_search import BeamSearch, BeamSearchParams
from glassbox.engine.errors import PromptTooLong, RequestRejected
from glassbox.engine.llm_engine import LLMEngine
from glassbox.engine.sequence import SamplingParams
from glassbox.steering.plan import (
    Direction,
    ResolvedCondition,
    ResolvedEdit,
    ResolvedGroup,
    ResolvedScope,
    SteeringPlan,
)

PROMPT = [301, 381, 376, 364, 17, 99, 42, 7, 61, 23]  # KV of 9 tokens: 2 full blocks + 1


def _search(engine: LLMEngine, params: BeamSearchParams, prompt=PROMPT) -> BeamSearch:
    search = BeamSearch(engine, engine.prefill_kv(prompt), params)
    while not search.step():
        pass
    return search


def _hf_beams(hf, engine: LLMEngine, params: BeamSearchParams, prompt=PROMPT):
    """HF's returned beams as (new tokens up to the first eos, score)."""
    out = hf.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        do_sample=False,
        num_beams=params.num_beams,
        max_new_tokens=params.max_new_tokens,
        length_penalty=params.length_penalty,
        no_repeat_ngram_size=params.no_repeat_ngram_size,
        early_stopping=params.early_stopping,
        num_return_sequences=params.num_return_sequences,
        eos_token_id=sorted(engine.eos_token_ids),
        pad_token_id=engine.tokenizer.hf.pad_token_id,
        output_scores=True,
        return_dict_in_generate=True,
    )
    beams = []
    for seq, score in zip(out.sequences, out.sequences_scores, strict=True):
        new = seq[len(prompt) :].tolist()
        ends = [i for i, t in enumerate(new) if t in engine.eos_token_ids]
        beams.append((new[: ends[0] + 1] if ends else new, float(score)))
    return beams


def _assert_same(ours, theirs):
    assert [h.token_ids for h in ours] == [t for t, _ in theirs]
    for h, (_, score) in zip(ours, theirs, strict=True):
        assert h.score == pytest.approx(score, abs=1e-4)


# The tiny random model rarely picks its real eos token: the eos configs make a token it
# often picks the eos, so that beams end early and early_stopping matters.
CONFIGS = [
    (None, dict(num_beams=4, max_new_tokens=8, num_return_sequences=4)),
    (None, dict(num_beams=3, max_new_tokens=10, length_penalty=0.5, no_repeat_ngram_size=2)),
    (None, dict(num_beams=5, max_new_tokens=12, early_stopping=True, num_return_sequences=2)),
    ({278}, dict(num_beams=4, max_new_tokens=10, early_stopping=True, num_return_sequences=4)),
    ({278}, dict(num_beams=4, max_new_tokens=10, early_stopping="never", num_return_sequences=4)),
    ({29}, dict(num_beams=2, max_new_tokens=10, length_penalty=2.0, num_return_sequences=2)),
    ({29, 169}, dict(num_beams=4, max_new_tokens=10, length_penalty=-0.5, num_return_sequences=3)),
    ({222}, dict(num_beams=3, max_new_tokens=9, no_repeat_ngram_size=1, num_return_sequences=3)),
]


@pytest.mark.parametrize(("eos", "config"), CONFIGS)
def test_beams_and_scores_match_hf(engine, hf_tiny, eos, config):
    if eos is not None:
        engine.eos_token_ids = eos
    params = BeamSearchParams(**config)
    hyps = _search(engine, params).hypotheses
    _assert_same(hyps, _hf_beams(hf_tiny, engine, params))
    for h in hyps:
        ended = bool(h.token_ids) and h.token_ids[-1] in engine.eos_token_ids
        assert h.finish_reason == ("stop" if ended else "length")
    if eos is not None:
        assert any(h.finish_reason == "stop" for h in hyps)


def test_one_beam_is_greedy_decoding(engine):
    hyp = _search(engine, BeamSearchParams(num_beams=1, max_new_tokens=6)).hypotheses[0]
    greedy = SamplingParams(max_tokens=6, temperature=0.0)
    assert hyp.token_ids == engine.generate([PROMPT], greedy)[0]["token_ids"]


def test_groups_without_diversity_are_independent_plain_searches(engine, hf_tiny):
    params = BeamSearchParams(4, 8, num_beam_groups=2, num_return_sequences=4)
    hyps = _search(engine, params).hypotheses
    plain = _hf_beams(hf_tiny, engine, BeamSearchParams(2, 8, num_return_sequences=2))
    # each group found the same two beams as a plain search of two beams
    _assert_same(hyps, [plain[0], plain[0], plain[1], plain[1]])
    assert sorted(h.group for h in hyps) == [0, 0, 1, 1]


def test_diversity_penalty_sends_later_groups_elsewhere(engine, hf_tiny):
    params = BeamSearchParams(
        num_beams=6, num_beam_groups=3, diversity_penalty=50.0, max_new_tokens=8,
        num_return_sequences=6,
    )  # fmt: skip
    hyps = _search(engine, params).hypotheses
    by_group = {g: [h for h in hyps if h.group == g] for g in range(3)}
    # the first group is never penalized: a plain search of two beams
    _assert_same(
        by_group[0], _hf_beams(hf_tiny, engine, BeamSearchParams(2, 8, num_return_sequences=2))
    )
    firsts = [{h.token_ids[0] for h in by_group[g]} for g in range(3)]
    assert not (firsts[0] & firsts[1]) and not (firsts[2] & (firsts[0] | firsts[1]))


def test_beams_share_the_states_blocks_and_release_everything(engine):
    bm = engine.block_manager
    free0 = bm.num_free
    state = engine.prefill_kv(PROMPT)
    search = BeamSearch(engine, bm.share(state), BeamSearchParams(num_beams=4, max_new_tokens=9))
    search.step()
    # four beams continue one state: they share its two full blocks and each has its own
    # copy of the partial third one (3 blocks for the state, 4 for the beams)
    assert [bm.blocks[b].ref_count for b in state.block_ids[:2]] == [5, 5]
    assert free0 - bm.num_free == 3 + 4
    while not search.step():
        assert free0 - bm.num_free < 3 + 4 * 3  # beams share their common past
    assert len(search.hypotheses) == 1
    assert free0 - bm.num_free == 3
    bm.release(state)
    assert bm.num_free == free0


def test_close_mid_search_releases_everything(engine):
    free0 = engine.block_manager.num_free
    search = BeamSearch(
        engine,
        engine.prefill_kv(PROMPT),
        BeamSearchParams(num_beams=3, max_new_tokens=20, keep_kv=True),
    )
    for _ in range(6):
        search.step()
    search.close()
    assert engine.block_manager.num_free == free0
    assert search.step() is True and search.take_kv() is None


def test_the_best_beam_kv_continues_like_its_tokens(engine):
    bm = engine.block_manager
    free0 = bm.num_free
    engine.eos_token_ids = {304}
    search = _search(engine, BeamSearchParams(num_beams=3, max_new_tokens=10, keep_kv=True))
    best = search.hypotheses[0]
    kv = search.take_kv()
    assert kv is not None and list(kv.token_ids) == PROMPT + best.token_ids
    fresh = engine.prefill_kv(list(kv.token_ids))
    torch.testing.assert_close(engine.read_kv(kv), engine.read_kv(fresh), atol=1e-5, rtol=0)
    bm.release(fresh)
    greedy = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
    cold = engine.generate([list(kv.token_ids)], greedy)[0]["token_ids"]
    seq = engine.add_request(list(kv.token_ids), greedy, kv)  # the sequence takes kv over
    warm = []
    while engine.has_work():
        warm += [t for o in engine.step() if o.seq_id == seq.seq_id for t in o.token_ids]
    assert warm == cold
    assert bm.num_free == free0


def test_a_steered_search_runs_every_beam_under_the_plan(engine, tiny_model):
    hidden = tiny_model.config.hidden_size
    w = torch.randn(hidden, generator=torch.Generator().manual_seed(3))
    plan = SteeringPlan([ResolvedEdit(Direction("d", 0, w / w.norm(), 0.0, w), "nudge", 1.0)])
    free0 = engine.block_manager.num_free
    steered = _search(engine, BeamSearchParams(3, 6, steering=plan)).hypotheses[0]
    plain = _search(engine, BeamSearchParams(3, 6)).hypotheses[0]
    assert steered.token_ids != plain.token_ids
    # one steered beam is steered greedy decoding from the state (its prefill and decodes)
    one = _search(engine, BeamSearchParams(1, 6, steering=plan)).hypotheses[0]
    state = engine.prefill_kv(PROMPT)
    params = SamplingParams(max_tokens=6, temperature=0.0, logprobs=0, steering=plan)
    seq = engine.add_request(PROMPT, params, state)
    tokens, logprobs = [], []
    while engine.has_work():
        for out in engine.step():
            if out.seq_id == seq.seq_id:
                tokens += out.token_ids
                logprobs += [lp.logprob for lp in out.logprobs]
    assert one.token_ids == tokens
    assert one.score == pytest.approx(sum(logprobs) / len(tokens), abs=1e-4)
    assert engine.block_manager.num_free == free0


def test_beams_a_scope_aborts_end_as_hypotheses(engine, tiny_model):
    hidden = tiny_model.config.hidden_size
    w = torch.randn(hidden, generator=torch.Generator().manual_seed(5))
    d = Direction("d", 0, w / w.norm(), 0.0, w)
    captured, _ = engine.capture([PROMPT], {0})
    # abort a beam when its newest token reads higher on d than the state's last token did
    threshold = float(captured[0][0][-1] @ d.read) + 1e-3
    when = ResolvedGroup("&", (ResolvedCondition(d, ">", threshold),))
    plan = SteeringPlan([], [ResolvedScope(0, when, (), abort=True)])
    free0 = engine.block_manager.num_free
    params = BeamSearchParams(3, 8, num_return_sequences=3, steering=plan, keep_kv=True)
    search = _search(engine, params)
    aborted = [h for h in search.hypotheses if h.finish_reason == "steering_abort"]
    assert aborted and all(h.token_ids for h in aborted)
    for h in aborted:  # ended by its last token: the first token past the threshold
        acts = engine.capture([PROMPT + h.token_ids], {0})[0][0][0][len(PROMPT) :] @ d.read
        assert float(acts[-1]) > threshold and bool((acts[:-1] <= threshold).all())
    engine.block_manager.release(search.take_kv())
    assert engine.block_manager.num_free == free0

    always = ResolvedScope(0, ResolvedGroup("|", (ResolvedCondition(d, ">", -1e9),)), (), True)
    params = BeamSearchParams(3, 8, steering=SteeringPlan([], [always]), keep_kv=True)
    search = _search(engine, params)  # aborted before its first token: nothing to return
    assert search.hypotheses == [] and search.take_kv() is None
    assert engine.block_manager.num_free == free0


def test_normal_requests_step_between_search_steps(engine):
    greedy = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    alone = engine.generate([[5, 6, 7]], greedy)[0]["token_ids"]
    expected = _search(engine, BeamSearchParams(num_beams=3, max_new_tokens=8)).hypotheses
    seq = engine.add_request([5, 6, 7], greedy)
    search = BeamSearch(engine, engine.prefill_kv(PROMPT), BeamSearchParams(3, 8))
    got, done = [], False
    while engine.has_work() or not done:
        got += [t for o in engine.step() if o.seq_id == seq.seq_id for t in o.token_ids]
        done = done or search.step()
    assert got == alone
    assert search.hypotheses == expected


@pytest.mark.parametrize(
    "bad",
    [
        dict(num_beams=0),
        dict(max_new_tokens=0),
        dict(num_beams=4, num_beam_groups=3),
        dict(num_beam_groups=0),
        dict(num_beams=4, num_beam_groups=2, diversity_penalty=-1.0),
        dict(diversity_penalty=0.5),
        dict(no_repeat_ngram_size=-1),
        dict(early_stopping="sometimes"),
        dict(num_beams=2, num_return_sequences=3),
        dict(num_return_sequences=0),
        dict(length_penalty=float("nan")),
    ],
)
def test_bad_params_are_rejected_naming_the_field(bad):
    with pytest.raises(RequestRejected) as info:
        BeamSearchParams(**bad)
    assert info.value.param in bad


def test_a_state_that_fills_the_context_is_refused_and_released(make_engine):
    engine = make_engine(max_model_len=len(PROMPT) + 2)
    params = BeamSearchParams(num_beams=2, max_new_tokens=5, keep_kv=True)
    full = _search(engine, params)  # the context had room for two new tokens
    assert len(full.hypotheses[0].token_ids) == 2 and full.hypotheses[0].finish_reason == "length"
    free0 = engine.block_manager.num_free
    kv = full.take_kv()
    search = BeamSearch(engine, kv, params)
    with pytest.raises(PromptTooLong, match="no room"):
        search.step()
    assert engine.block_manager.num_free == free0 + len(kv.block_ids)


def test_searches_count_in_the_engine_stats(engine):
    handle = engine.prefill_kv(PROMPT)
    before = (engine.stats.prompt_tokens, engine.stats.generation_tokens)
    search = BeamSearch(engine, handle, BeamSearchParams(num_beams=3, max_new_tokens=4))
    steps = 1
    while not search.step():
        steps += 1
    assert engine.stats.prompt_tokens - before[0] == len(PROMPT)
    # Four steps (no beam of this prompt ends early): the first runs the one starting beam,
    # each of the three later ones all three beams.
    assert steps == 4 and all(len(h.token_ids) == 4 for h in search.hypotheses)
    assert engine.stats.generation_tokens - before[1] == 1 + 3 * 3
