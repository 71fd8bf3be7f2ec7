"""Grammar-constrained rows in the engine: masks applied before sampling, per row, in one
continuous batch with unconstrained and steered rows."""

from __future__ import annotations

import ctypes
import json

import pytest
import torch

from glassbox.engine.grammar import GRAMMAR_FAILED, apply_masks, bitmask_words, row_masks
from glassbox.engine.sequence import SamplingParams
from glassbox.steering.plan import Direction, ResolvedEdit, SteeringPlan
from glassbox.structured.grammar import GrammarCompiler

SCHEMA = {
    "type": "object",
    "properties": {
        "colour": {"enum": ["red", "green", "blue"]},
        "count": {"type": "integer", "minimum": 1, "maximum": 9},
    },
    "required": ["colour", "count"],
    "additionalProperties": False,
}


@pytest.fixture
def grammars(tiny_tokenizer, tiny_model) -> GrammarCompiler:
    return GrammarCompiler(tiny_tokenizer, tiny_model.config.vocab_size)


def prompt(engine) -> list[int]:
    return engine.tokenizer.encode("the quick brown fox")


def test_masks_keep_exactly_the_allowed_tokens() -> None:
    vocab = 310  # 10 words, the last one partly past the vocabulary
    logits = torch.randn(3, vocab)
    before = logits.clone()
    bitmask = torch.zeros(2, bitmask_words(vocab), dtype=torch.int32)
    allowed = {0: [0, 31, 32, 69, 309], 1: [t for t in range(vocab) if t not in (3, 64)]}
    for row, tokens in allowed.items():
        for t in tokens:
            bitmask[row, t // 32] |= 1 << (t % 32)
    masks = row_masks(bitmask.numpy(), vocab)
    assert [m.allowed for m in masks] == [True, False]  # few allowed; few forbidden
    assert masks[1].ids.tolist() == [3, 64]  # bits past the vocabulary are not tokens
    apply_masks(logits, masks, [0, 2])  # mask rows 0, 1 constrain logits rows 0, 2
    assert torch.isfinite(logits[0]).nonzero().view(-1).tolist() == allowed[0]
    assert torch.equal(logits[0, allowed[0]], before[0, allowed[0]])
    assert torch.equal(logits[1], before[1])  # not constrained
    assert torch.isfinite(logits[2]).nonzero().view(-1).tolist() == allowed[1]
    assert torch.equal(logits[2, allowed[1]], before[2, allowed[1]])


def test_a_negative_word_sets_bit_31() -> None:
    """Bit 31 of an int32 word is its sign: token 31 must survive the unpacking."""
    logits = torch.zeros(1, 32)
    bitmask = torch.tensor([[-(2**31)]], dtype=torch.int32)
    apply_masks(logits, row_masks(bitmask.numpy(), 32), [0])
    assert torch.isfinite(logits[0]).nonzero().view(-1).tolist() == [31]


def test_constrained_unconstrained_and_steered_rows_share_a_batch(engine, grammars) -> None:
    grammar = grammars.json_schema(SCHEMA)
    w = torch.randn(engine.model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    steer = SteeringPlan([ResolvedEdit(Direction("d", 0, w / w.norm(), 0.0, w), "nudge", 1.0)])
    ids = prompt(engine)
    params = [
        SamplingParams(max_tokens=40, temperature=1.0, seed=1, grammar=grammar),
        SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True),
        SamplingParams(max_tokens=40, temperature=1.0, seed=2, grammar=grammar, steering=steer),
        SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, steering=steer),
    ]
    out = engine.generate([ids] * 4, params)
    for i in (0, 2):
        assert out[i]["finish_reason"] == "stop"
        value = json.loads(out[i]["text"])
        assert value["colour"] in ("red", "green", "blue") and 1 <= value["count"] <= 9
    # The free rows are what they are without the constrained ones beside them.
    alone = engine.generate([ids, ids], [params[1], params[3]])
    assert [o["token_ids"] for o in alone] == [out[1]["token_ids"], out[3]["token_ids"]]
    assert out[1]["token_ids"] != out[3]["token_ids"]  # the steering took effect
    assert engine.masks.times.masks > 0


def test_a_grammar_that_cannot_close_in_time_ends_with_length(engine, grammars) -> None:
    grammar = grammars.json_schema(SCHEMA)
    [out] = engine.generate([prompt(engine)], SamplingParams(max_tokens=3, grammar=grammar))
    assert out["finish_reason"] == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(out["text"])


def test_a_choice_is_one_of_the_options_for_every_seed(engine, grammars) -> None:
    grammar = grammars.choice(["yes", "no", "maybe so"])
    params = [SamplingParams(max_tokens=10, seed=s, grammar=grammar) for s in range(8)]
    outs = engine.generate([prompt(engine)] * 8, params)
    assert {o["text"] for o in outs} <= {"yes", "no", "maybe so"}
    assert all(o["finish_reason"] == "stop" for o in outs)


def test_the_mask_is_applied_after_logit_bias(engine, grammars) -> None:
    """A logit_bias cannot re-allow a token the grammar forbids."""
    grammar = grammars.choice(["yes"])
    forbidden = engine.tokenizer.encode("no", add_special_tokens=False)[0]
    params = SamplingParams(max_tokens=5, logit_bias={forbidden: 100.0}, grammar=grammar)
    [out] = engine.generate([prompt(engine)], params)
    assert out["text"] == "yes"


class _Refusing:
    """A matcher whose grammar allows every token, and then refuses the one sampled (the
    library's error path, which a real grammar reaches only by a library fault)."""

    def fill_bitmask(self, address: int, nbytes: int) -> None:
        ctypes.memset(address, 0xFF, nbytes)

    def consume(self, token_id: int) -> bool:
        return False

    def is_stopped(self) -> bool:
        return False

    def error(self) -> str | None:
        return "refused"


class _RefusingGrammar:
    def matcher(self) -> _Refusing:
        return _Refusing()


def test_a_failed_matcher_ends_the_row_with_grammar_failed(engine) -> None:
    params = SamplingParams(max_tokens=5, grammar=_RefusingGrammar())
    free = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
    outs = engine.generate([prompt(engine)] * 2, [params, free])
    assert outs[0]["finish_reason"] == GRAMMAR_FAILED
    assert outs[1]["finish_reason"] == "length"
