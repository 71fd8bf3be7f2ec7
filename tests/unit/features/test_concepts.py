"""Concept vectors by DiffMean: directions, scale, centring and the on-disk cache."""

from __future__ import annotations

import pytest
import torch

from glassbox.features.concepts import (
    NOISE_Z,
    STEER_SPREAD,
    Concept,
    ConceptData,
    build_concept_dictionary,
    build_concept_steps,
    cache_path,
    concept_dictionary,
    load_dictionary,
    save_dictionary,
)


def _concept(cid: str, examples: list[str]) -> Concept:
    return Concept(cid, cid.title(), "topic", f"about {cid}", tuple(examples), (), "train")


DATA = ConceptData(
    neutral=("The box is on the table.", "It rained on Monday.", "Numbers: 1 2 3.", "Hello world."),
    concepts=(
        _concept("fox", ["The quick brown fox jumps.", "A fox, a fox, the quick fox."]),
        _concept("paris", ["Paris is the capital of France.", "France! Paris! Capital!"]),
        _concept("stop", ["Stop here. END of text.", "END END stop stop."]),
    ),
    digest="test",
)


def test_diffmean_directions_are_unit_steps_centred_on_neutral_text(engine):
    d = build_concept_dictionary(engine, DATA, layer=1, progress=False)
    assert len(d) == 3 and d.layer == 1 and d.labels == ["Fox", "Paris", "Stop"]
    # reading a write vector gives exactly 1.0: value 1.0 means one steering unit
    torch.testing.assert_close((d.write * d.read).sum(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    # the write vectors all have the same norm: STEER_FRACTION x the median residual norm
    norms = d.write.norm(dim=1)
    assert torch.allclose(norms, norms[0].expand(3))

    def mean_linear(texts):
        captured, _ = engine.capture([engine.tokenizer.encode(t) for t in texts], {1})
        return torch.stack([d.read_linear(c[1][1:]).mean(dim=0) for c in captured]).mean(dim=0)

    neutral = mean_linear(list(DATA.neutral))
    assert neutral.abs().max() < 1e-4  # centred: neutral text reads as 0
    for i, concept in enumerate(DATA.concepts):
        own = mean_linear(list(concept.examples))
        assert own[i] > 0 and own[i] == own.max()  # a concept's texts read highest on it


def test_inspection_reports_what_stands_out_of_neutral_noise(engine):
    d = build_concept_dictionary(engine, DATA, layer=1, progress=False)
    assert (d.noise > 0).all()
    h = torch.randn(5, engine.model.config.hidden_size)
    acts = d.activations(h)
    assert (acts >= 0).all()
    torch.testing.assert_close(acts, (d.read_linear(h) - NOISE_Z * d.noise).clamp(min=0))

    def firing(texts):
        captured, _ = engine.capture([engine.tokenizer.encode(t) for t in texts], {1})
        return torch.cat([(d.activations(c[1][1:]) > 0).float() for c in captured]).mean(0)

    neutral = firing(list(DATA.neutral))
    assert neutral.max() < 0.25  # ordinary text rarely fires a concept
    for i, concept in enumerate(DATA.concepts):
        assert firing(list(concept.examples))[i] > neutral[i]


def test_cache_round_trip_and_reuse(engine, tmp_path):
    d = build_concept_dictionary(engine, DATA, layer=1, model_fingerprint="fp", progress=False)
    path = cache_path(tmp_path, "fp", 1, DATA.digest)
    save_dictionary(d, path)
    loaded = load_dictionary(path, "fp")
    assert loaded.labels == d.labels and loaded.descriptions == d.descriptions
    assert [f.uuid for f in loaded.features] == [f.uuid for f in d.features]
    assert loaded.steer_layers == d.steer_layers
    for name in ("write", "read", "read_bias", "noise"):
        assert torch.equal(getattr(loaded, name), getattr(d, name))


def test_the_build_runs_one_forward_pass_per_step_to_the_same_dictionary(engine, monkeypatch):
    passes = []
    capture = engine.capture
    monkeypatch.setattr(engine, "capture", lambda *a, **kw: passes.append(1) or capture(*a, **kw))
    steps = build_concept_steps(engine, DATA, layer=1, progress=False, batch=2)
    yielded = []
    while True:
        try:
            next(steps)
        except StopIteration as done:
            stepped = done.value
            break
        yielded.append(len(passes))
    # 4 neutral texts and 6 examples in batches of 2: 5 steps of one forward pass each
    assert yielded == [1, 2, 3, 4, 5] and len(passes) == 5
    whole = build_concept_dictionary(engine, DATA, layer=1, progress=False, batch=2)
    for name in ("write", "read", "read_bias", "noise"):
        torch.testing.assert_close(getattr(stepped, name), getattr(whole, name))


def test_concept_dictionary_builds_once_then_loads(engine, tmp_path, monkeypatch):
    calls = []
    import glassbox.features.concepts as concepts

    real_build = concepts.build_concept_steps

    def counting(*args, **kwargs):
        calls.append(1)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(concepts, "load_concept_data", lambda: DATA)
    monkeypatch.setattr(concepts, "build_concept_steps", counting)
    first = concept_dictionary(engine, tmp_path, "fp", layer=1, progress=False)
    second = concept_dictionary(engine, tmp_path, "fp", layer=1, progress=False)
    assert len(calls) == 1 and second.labels == first.labels
    concept_dictionary(engine, tmp_path, "fp", layer=1, rebuild=True, progress=False)
    assert len(calls) == 2


def test_nudges_spread_over_neighbouring_layers(engine):
    d = build_concept_dictionary(engine, DATA, layer=1, progress=False)
    last = engine.model.config.num_layers - 1
    assert d.steer_layers == tuple(range(max(0, 1 - STEER_SPREAD), min(last, 1 + STEER_SPREAD) + 1))
    edits = d.nudge(2, 0.9)
    assert [e.direction.layer for e in edits] == list(d.steer_layers)
    assert sum(e.value for e in edits) == pytest.approx(0.9)
    assert all(torch.equal(e.direction.write, d.write[2]) for e in edits)
