"""Per-row steering at the layer hook: each row of a batch carries its own plan."""

from __future__ import annotations

import torch
from helpers.engine import Driver

from glassbox.engine.llm_engine import STEERING_ABORT
from glassbox.engine.sequence import SamplingParams
from glassbox.steering.plan import (
    Direction,
    ResolvedCondition,
    ResolvedEdit,
    ResolvedGroup,
    ResolvedScope,
    SteeringPlan,
)

PROMPT = [5, 17, 33, 8, 41, 2, 19]


def _direction(hidden: int, layer: int, seed: int, key: str | None = None) -> Direction:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(hidden, generator=g)
    write = 2.0 * w / w.norm()
    # read . write == 1: reading h + v * write moves the activation by exactly v.
    return Direction(key or f"d{seed}", layer, read=write / 4.0, read_bias=0.0, write=write)


def _plan(*edits: ResolvedEdit, scopes: tuple[ResolvedScope, ...] = ()) -> SamplingParams:
    return SamplingParams(steering=SteeringPlan(list(edits), list(scopes)))


def _capture(layer: int, store: dict):
    def hook(i, h):
        if i == layer:
            store["h"] = h.clone()
        return h

    return hook


def test_nudge_equals_adding_the_write_vector_by_hand(tiny_model):
    d = _direction(tiny_model.config.hidden_size, 0, seed=1)
    _, steered = Driver(tiny_model).prefill([PROMPT], params=[_plan(ResolvedEdit(d, "nudge", 1.5))])

    def by_hand(i, h):
        return h + 1.5 * d.write if i == 0 else h

    _, manual = Driver(tiny_model).prefill([PROMPT], hook=by_hand)
    _, plain = Driver(tiny_model).prefill([PROMPT])
    torch.testing.assert_close(steered, manual, atol=1e-5, rtol=0)
    assert (steered - plain).abs().max() > 1e-2


def test_rows_with_different_variants_share_one_batch(tiny_model):
    hidden = tiny_model.config.hidden_size
    a, b = _direction(hidden, 0, seed=2), _direction(hidden, 1, seed=3)
    params = [
        _plan(ResolvedEdit(a, "nudge", 2.0)),
        SamplingParams(),
        _plan(ResolvedEdit(b, "pin", -1.0), ResolvedEdit(a, "nudge", -1.0)),
    ]
    prompts = [PROMPT, PROMPT[:4], PROMPT[2:]]
    driver = Driver(tiny_model)
    seqs, batched = driver.prefill(prompts, params=params)
    alone = [
        Driver(tiny_model).prefill([p], params=[sp])[1][0]
        for p, sp in zip(prompts, params, strict=True)
    ]
    for row, ref in zip(batched, alone, strict=True):
        torch.testing.assert_close(row, ref, atol=1e-5, rtol=0)
    # ... and in decode steps too, where the batch's steering is reused between steps.
    for step in range(3):
        decoded = driver.decode(seqs, [7 + step] * 3)
        for i, seq in enumerate(seqs):
            solo = Driver(tiny_model)
            s, _ = solo.prefill([seq.token_ids[:-1]], params=[params[i]])
            ref = solo.decode(s, [seq.token_ids[-1]])[0]
            torch.testing.assert_close(decoded[i], ref, atol=1e-4, rtol=0)


def test_pin_sets_the_activation_and_ablate_removes_it(tiny_model):
    d = _direction(tiny_model.config.hidden_size, 1, seed=4)
    for mode, value, expected in [("pin", 3.0, 3.0), ("ablate", 0.0, 0.0), ("mul", 0.0, 0.0)]:
        seen: dict = {}
        Driver(tiny_model).prefill(
            [PROMPT], hook=_capture(1, seen), params=[_plan(ResolvedEdit(d, mode, value))]
        )
        acts = seen["h"] @ d.read
        assert torch.allclose(acts, torch.full_like(acts, expected), atol=1e-4), mode


def test_mul_scales_the_activation(tiny_model):
    d = _direction(tiny_model.config.hidden_size, 1, seed=5)
    before: dict = {}
    Driver(tiny_model).prefill([PROMPT], hook=_capture(1, before))
    after: dict = {}
    Driver(tiny_model).prefill(
        [PROMPT], hook=_capture(1, after), params=[_plan(ResolvedEdit(d, "mul", 3.0))]
    )
    # Layer 1's own computation is unchanged; only the edit after it differs.
    torch.testing.assert_close(after["h"] @ d.read, 3.0 * (before["h"] @ d.read), atol=1e-4, rtol=0)


def test_set_when_applies_edits_only_where_the_condition_holds(tiny_model):
    hidden = tiny_model.config.hidden_size
    cond, edit = _direction(hidden, 0, seed=6), _direction(hidden, 0, seed=7)
    base: dict = {}
    Driver(tiny_model).prefill([PROMPT], hook=_capture(0, base))
    acts = base["h"] @ cond.read
    threshold = float(acts.median())
    scope = ResolvedScope(
        0,
        ResolvedGroup("&", (ResolvedCondition(cond, ">", threshold),)),
        (ResolvedEdit(edit, "nudge", 1.0),),
        abort=False,
    )
    seen: dict = {}
    Driver(tiny_model).prefill([PROMPT], hook=_capture(0, seen), params=[_plan(scopes=(scope,))])
    changed = (seen["h"] - base["h"]).abs().amax(dim=-1) > 1e-5
    assert torch.equal(changed, acts > threshold)
    assert 0 < int(changed.sum()) < len(PROMPT)


def test_abort_when_ends_the_sequence(make_engine):
    engine = make_engine()
    hidden = engine.model.config.hidden_size
    d = _direction(hidden, 0, seed=8)
    always = ResolvedScope(
        0, ResolvedGroup("|", (ResolvedCondition(d, ">", -1e9),)), (), abort=True
    )
    never = ResolvedScope(0, ResolvedGroup("&", (ResolvedCondition(d, ">", 1e9),)), (), True)
    ids = PROMPT
    out = engine.generate(
        [ids, ids, ids],
        [
            SamplingParams(max_tokens=5, ignore_eos=True, steering=SteeringPlan([], [always])),
            SamplingParams(max_tokens=5, ignore_eos=True, steering=SteeringPlan([], [never])),
            SamplingParams(max_tokens=5, ignore_eos=True),
        ],
    )
    assert out[0]["finish_reason"] == STEERING_ABORT and out[0]["token_ids"] == []
    assert out[1]["finish_reason"] == "length" and len(out[1]["token_ids"]) == 5
    assert out[2]["finish_reason"] == "length"


def test_logits_from_residual_matches_the_forward_pass(engine):
    model = engine.model
    last = model.config.num_layers - 1
    captured, logits = engine.capture([PROMPT], {last})
    torch.testing.assert_close(
        model.logits_from_residual(captured[0][last])[-1], logits[0], atol=1e-5, rtol=0
    )
