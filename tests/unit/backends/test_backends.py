"""SteeringVectors, the backend registry, and the local and llama.cpp backends."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from helpers.waiting import async_wait_until

from glassbox.backends import (
    BackendUnavailableError,
    InferenceEngine,
    create_backend,
    get_available_backends,
    is_backend_available,
    register_backend,
)
from glassbox.backends.local import LocalBackend
from glassbox.engine.async_engine import AsyncLLMEngine
from glassbox.features.concepts import Concept, ConceptData
from glassbox.features.emotion import EMOTIONS, EmotionalState
from glassbox.features.vector_files import vector_dictionary
from glassbox.features.vectors import SteeringVectors

LABELS = ["Excited", "Calm", "Frustrated", "Depleted"]
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
LAYER = 1


def _dictionary(hidden: int = 64, norm: float = 1.0, layer: int = LAYER):
    g = torch.Generator().manual_seed(7)
    vectors = torch.randn(len(LABELS), hidden, generator=g)
    vectors = norm * vectors / vectors.norm(dim=-1, keepdim=True)
    return vector_dictionary("emotions", layer, LABELS, vectors)


# --- SteeringVectors ----------------------------------------------------------------------


def test_names_match_labels_case_insensitively():
    vectors = SteeringVectors.from_dictionary(_dictionary(), names=EMOTIONS)
    assert vectors.available == sorted(EMOTIONS)
    assert "EXCITED" in vectors and vectors.layer == LAYER
    assert SteeringVectors.from_dictionary(_dictionary()).available == sorted(LABELS)


def test_blend_gives_one_nudge_per_non_zero_coefficient():
    d = _dictionary()
    vectors = SteeringVectors.from_dictionary(d, names=EMOTIONS)
    plan = vectors.blend({"excited": 0.5, "calm": 0.0, "Frustrated": -0.25}, strength=2.0)
    assert [(e.mode, e.value) for e in plan.edits] == [("nudge", 1.0), ("nudge", -0.5)]
    excited, frustrated = plan.edits
    assert excited.direction.layer == LAYER and excited.direction.key == d.features[0].uuid
    torch.testing.assert_close(excited.direction.write, d.write[0])
    torch.testing.assert_close(frustrated.direction.write, d.write[2])
    # reading the write vector back gives exactly one unit
    assert float(excited.direction.read @ excited.direction.write) == pytest.approx(1.0)
    assert vectors.blend(dict.fromkeys(EMOTIONS, 0.0)).is_empty
    assert vectors.blend({"calm": 1.0}, strength=0.0).is_empty


def test_blended_vector_is_the_weighted_sum():
    d = _dictionary()
    vectors = SteeringVectors.from_dictionary(d, names=EMOTIONS)
    coefficients = EmotionalState(0.4, -0.7).get_steering_coefficients()
    expected = sum(c * d.write[LABELS.index(n.capitalize())] for n, c in coefficients.items())
    torch.testing.assert_close(vectors.blended_vector(coefficients), expected)
    plan = vectors.blend(coefficients)
    by_plan = sum(e.value * e.direction.write for e in plan.edits)
    torch.testing.assert_close(by_plan, expected)


def test_unknown_names_and_bad_coefficients_are_rejected():
    vectors = SteeringVectors.from_dictionary(_dictionary(), names=EMOTIONS)
    with pytest.raises(ValueError, match="'joyful'.*available: calm, depleted, excited"):
        vectors.blend({"joyful": 1.0})
    with pytest.raises(ValueError, match="finite"):
        vectors.blend({"calm": math.nan})
    with pytest.raises(ValueError, match="strength"):
        vectors.blend({"calm": 1.0}, strength=math.inf)
    with pytest.raises(ValueError, match="'bored'"):
        SteeringVectors.from_dictionary(_dictionary(), names=["calm", "bored"])


def test_concept_ids_name_concept_features():
    labels = ["Excitement and enthusiasm", "Calm serenity", "Frustration", "Exhaustion"]
    d = vector_dictionary("concepts", LAYER, labels, _dictionary().write)
    data = ConceptData(
        neutral=(),
        concepts=tuple(
            Concept(cid, label, "emotion", label, (), (), "train")
            for cid, label in zip(EMOTIONS, labels, strict=True)
        ),
        digest="test",
    )
    vectors = SteeringVectors.from_concepts(d, names=EMOTIONS, data=data)
    assert vectors.available == sorted(EMOTIONS)
    torch.testing.assert_close(vectors.direction("depleted").write, d.write[3])
    # without names: ids and labels both work
    every = SteeringVectors.from_concepts(d, data=data)
    assert vectors.direction("calm").key == every.direction("calm serenity").key


def test_vectors_from_a_folder(tmp_path):
    from safetensors.torch import save_file

    d = _dictionary(hidden=8)
    for label, v in zip(LABELS, d.write, strict=True):
        save_file({"vector": v.contiguous()}, tmp_path / f"{label.lower()}.safetensors")
    vectors = SteeringVectors.from_folder(tmp_path, layer=3, hidden_size=8)
    assert vectors.available == sorted(EMOTIONS) and vectors.layer == 3
    torch.testing.assert_close(vectors.blended_vector({"calm": 2.0}), 2.0 * d.write[1])


# --- registry -----------------------------------------------------------------------------


class _Echo(InferenceEngine):
    MODULATION_TYPE = "sampling"

    def __init__(self, prefix: str = ""):
        super().__init__()
        self.prefix = prefix

    async def chat_completion(self, messages, max_tokens=None, temperature=None, top_p=None,
                              emotion_coefficients=None) -> str:  # fmt: skip
        t, p = self.sampling(temperature, top_p, emotion_coefficients)
        return f"{self.prefix}{messages[-1]['content']} t={t:.2f} p={p:.2f}"

    async def chat_completion_stream(self, messages, max_tokens=None, temperature=None,
                                     top_p=None, emotion_coefficients=None):  # fmt: skip
        yield await self.chat_completion(messages, max_tokens, temperature, top_p)


async def test_registry_creates_reports_and_rejects():
    register_backend("test-echo", _Echo)
    register_backend("test-missing", _Echo, available=lambda: False)
    try:
        available = get_available_backends()
        assert {"local", "llama-cpp", "openai-upstream"} <= set(available)
        assert available["local"] and available["openai-upstream"]
        assert available["llama-cpp"] == (importlib.util.find_spec("llama_cpp") is not None)
        assert available["test-echo"] and not available["test-missing"]
        assert is_backend_available("test-echo") and not is_backend_available("nope")

        backend = create_backend("test-echo", prefix="> ")
        assert await backend.chat_completion([{"role": "user", "content": "hi"}]) == (
            "> hi t=0.70 p=0.90"
        )
        excited = EmotionalState(1.0, 1.0).get_steering_coefficients()
        reply = await backend.chat_completion(MESSAGES[:1], emotion_coefficients=excited)
        assert reply.endswith("t=1.00 p=1.00")
        with pytest.raises(ValueError, match="unknown backend 'nope'.*local.*test-echo"):
            create_backend("nope")
        with pytest.raises(BackendUnavailableError, match="test-missing"):
            create_backend("test-missing")
    finally:
        from glassbox.backends import registry

        registry._REGISTRY.pop("test-echo")
        registry._REGISTRY.pop("test-missing")


def test_backend_capabilities():
    from glassbox.backends.llama_cpp import LlamaCppBackend
    from glassbox.backends.openai_upstream import OpenAIUpstreamBackend

    assert (LocalBackend.SUPPORTS_STEERING, LocalBackend.MODULATION_TYPE) == (True, "steering")
    for cls in (LlamaCppBackend, OpenAIUpstreamBackend):
        assert (cls.SUPPORTS_STEERING, cls.MODULATION_TYPE) == (False, "sampling")


# --- LocalBackend on the tiny model -------------------------------------------------------


@pytest.fixture
def aengine(make_engine):
    engine = AsyncLLMEngine(make_engine)
    yield engine
    engine.shutdown()


def _local(aengine, norm: float = 40.0) -> LocalBackend:
    hidden = aengine.model_config.hidden_size
    vectors = SteeringVectors.from_dictionary(_dictionary(hidden, norm), names=EMOTIONS)
    return create_backend("local", engine=aengine, vectors=vectors)


async def test_local_steering_changes_greedy_output(aengine):
    backend = _local(aengine)
    greedy = {"max_tokens": 12, "temperature": 0.0}
    plain = await backend.chat_completion(MESSAGES, **greedy)
    zeros = await backend.chat_completion(
        MESSAGES, emotion_coefficients=dict.fromkeys(EMOTIONS, 0.0), **greedy
    )
    steered = await backend.chat_completion(
        MESSAGES, emotion_coefficients={"excited": 2.0, "calm": -1.0}, **greedy
    )
    assert plain and zeros == plain
    assert steered != plain
    # streaming gives the same text in pieces
    pieces = [
        p
        async for p in backend.chat_completion_stream(
            MESSAGES, emotion_coefficients={"excited": 2.0, "calm": -1.0}, **greedy
        )
    ]
    assert len(pieces) > 1 and "".join(pieces) == steered


async def test_local_request_carries_the_plan_and_keeps_sampling(aengine):
    backend = _local(aengine)
    coefficients = EmotionalState(0.5, 0.5).get_steering_coefficients()
    params = backend.request(MESSAGES, 4, None, None, coefficients).params
    assert (params.temperature, params.top_p, params.max_tokens) == (0.7, 0.9, 4)
    assert sorted(e.value for e in params.steering.edits) == sorted(
        40.0 / 40.0 * c for c in coefficients.values()
    )
    plain = backend.request(MESSAGES, None, 0.0, 1.0, None).params
    assert plain.steering is None and (plain.temperature, plain.top_p) == (0.0, 1.0)
    assert plain.max_tokens == aengine.max_model_len - len(
        aengine.tokenizer.apply_chat_template(MESSAGES)
    )
    with pytest.raises(ValueError, match="unknown steering vector 'joy'"):
        backend.request(MESSAGES, 4, None, None, {"joy": 1.0})


async def test_local_without_vectors_falls_back_to_sampling(aengine, caplog):
    backend = LocalBackend(aengine)
    excited = EmotionalState(1.0, 1.0).get_steering_coefficients()
    with caplog.at_level("WARNING", logger="glassbox.backends.local"):
        params = backend.request(MESSAGES, 4, 0.7, 0.9, excited).params
    assert params.steering is None
    assert (params.temperature, params.top_p) == pytest.approx((1.0, 1.0))
    assert "no steering vectors" in caplog.text
    before = aengine.stats()["generation_tokens"]
    text = await backend.chat_completion(MESSAGES, max_tokens=3, emotion_coefficients=excited)
    assert isinstance(text, str)
    # It ran on the engine: 1 to 3 tokens sampled (an end token as the first one counts too).
    assert 1 <= aengine.stats()["generation_tokens"] - before <= 3


async def test_local_stream_closed_early_frees_the_engine(aengine):
    backend = _local(aengine)
    stream = backend.chat_completion_stream(MESSAGES, max_tokens=200, temperature=0.0)
    async for _ in stream:
        break
    await stream.aclose()

    def freed() -> bool:
        stats = aengine.stats()
        return stats["running"] == 0 and stats["kv_blocks_used"] == 0

    assert await async_wait_until(freed)


# --- LlamaCppBackend on the bundled GGUF (the llama_backend fixture: conftest.py) ----------


@pytest.mark.slow
async def test_llama_cpp_answers_and_modulates_sampling(llama_backend, monkeypatch):
    calls: list[dict] = []
    original = llama_backend.llm.create_chat_completion

    def spy(**kwargs):
        calls.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(llama_backend.llm, "create_chat_completion", spy)
    answer = await llama_backend.chat_completion(MESSAGES, max_tokens=12, temperature=0.0)
    assert isinstance(answer, str) and answer.strip()
    assert (calls[-1]["temperature"], calls[-1]["top_p"]) == (0.0, 0.9)

    samples = {}
    for name, (v, a) in {"depleted": (-1, -1), "neutral": (0, 0), "excited": (1, 1)}.items():
        coefficients = EmotionalState(v, a).get_steering_coefficients()
        pieces = [
            p
            async for p in llama_backend.chat_completion_stream(
                MESSAGES, max_tokens=4, emotion_coefficients=coefficients
            )
        ]
        assert pieces
        samples[name] = (calls[-1]["temperature"], calls[-1]["top_p"])
    assert samples["neutral"] == (0.7, 0.9)
    assert samples["depleted"] == pytest.approx((0.4, 0.8))
    assert samples["excited"] == pytest.approx((1.0, 1.0))
