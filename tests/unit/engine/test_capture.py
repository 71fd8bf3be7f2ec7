"""Activation capture: the residual stream at chosen layers for every prompt position."""

from __future__ import annotations

import pytest
import torch
from helpers.engine import Driver

from glassbox.engine.errors import RequestRejected
from glassbox.engine.sequence import SamplingParams
from glassbox.steering.plan import Direction, ResolvedEdit, SteeringPlan

PROMPTS = [[5, 17, 33, 8, 41, 2, 19], [3, 9, 27], [12] * 20]


def test_capture_returns_every_position_of_every_prompt(engine, tiny_model):
    captured, logits = engine.capture(PROMPTS, {0, 1})
    for prompt, layers, row in zip(PROMPTS, captured, logits, strict=True):
        seen: dict = {}

        def hook(i, h, seen=seen):
            seen[i] = h.clone()
            return h

        _, ref_logits = Driver(tiny_model).prefill([prompt], hook=hook)
        assert set(layers) == {0, 1}
        for layer in (0, 1):
            assert layers[layer].shape == (len(prompt), tiny_model.config.hidden_size)
            torch.testing.assert_close(layers[layer], seen[layer], atol=1e-5, rtol=0)
        torch.testing.assert_close(row, ref_logits[0], atol=1e-5, rtol=0)
    assert engine.block_manager.num_used == 0  # capture gives its blocks back


def test_capture_ignores_the_prefix_cache(engine, tiny_model):
    """A prompt whose prefix is cached is still computed at every position, to the same
    values as when nothing was cached."""
    prompt = PROMPTS[2]  # 20 tokens: 4 full blocks of 4 before the block of the last token
    cold, cold_logits = engine.capture([prompt], {0, 1})
    params = SamplingParams(max_tokens=1, temperature=0.0)
    engine.generate([prompt], params)
    before = engine.stats.prefix_cached_tokens
    engine.generate([prompt], params)
    assert engine.stats.prefix_cached_tokens - before == 16  # the prefix is cached now
    warm, warm_logits = engine.capture([prompt], {0, 1})
    for layer in (0, 1):
        assert warm[0][layer].shape == (len(prompt), tiny_model.config.hidden_size)
        assert torch.equal(warm[0][layer], cold[0][layer]), layer
    assert torch.equal(warm_logits, cold_logits)
    assert engine.block_manager.num_used == 0


def test_capture_under_a_steering_plan(engine, tiny_model):
    hidden = tiny_model.config.hidden_size
    w = torch.ones(hidden) / hidden**0.5
    plan = SteeringPlan([ResolvedEdit(Direction("d", 0, w, 0.0, w), "pin", 2.0)])
    captured, _ = engine.capture([PROMPTS[0]], {0}, steering=plan)
    acts = captured[0][0] @ w
    assert torch.allclose(acts, torch.full_like(acts, 2.0), atol=1e-4)


def test_capture_rejects_bad_prompts(engine):
    with pytest.raises(RequestRejected, match="empty"):
        engine.capture([[]], {0})
