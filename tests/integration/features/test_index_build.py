"""The feature dictionaries and search index of a live server: built on the engine thread
(DESIGN.md: one thread runs torch; a worker thread would get an OpenMP team of its own,
spinning on the engine's cores), in short engine calls that running generations step
between, and once however many requests wait for them. Inspection's activations are read
on the engine thread too."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import httpx
import pytest
import torch
from helpers.server import TINY_NAME, LiveServer, live, running, tiny_settings

from glassbox.embeddings.embedder import LocalEmbedder
from glassbox.features.concepts import ConceptDictionary, load_concept_data
from glassbox.features.search import EMBED_CHUNK, FeatureIndex

ENGINE_THREAD = "glassbox-engine"
EMBER = "/api/inference/v1"


class Recorder:
    """What ran where: (what, thread name, probe(), texts or None) per call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, list[str] | None]] = []
        self.probe: Callable[[], int] = lambda: 0

    def add(self, what: str, texts: list[str] | None = None) -> None:
        self.calls.append((what, threading.current_thread().name, self.probe(), texts))

    def of(self, what: str) -> list[tuple[str, str, int, list[str] | None]]:
        return [c for c in self.calls if c[0] == what]


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """Records where the server loads its embedding model ("encoder"), measures its
    precision while loading ("probe": once per process), embeds labels and queries with it
    (`encode`), builds the index and runs search, rerank and neighbours."""
    rec = Recorder()
    load_here, encode = LocalEmbedder.load_here, LocalEmbedder.encode
    loading_now = threading.Event()

    def loading(self: LocalEmbedder) -> None:
        if self.loaded:  # encode() calls it too, also from within the load
            return load_here(self)
        rec.add("encoder")
        loading_now.set()
        try:
            load_here(self)
        finally:
            loading_now.clear()

    def encoding(self: LocalEmbedder, texts: list[str]):
        rec.add("probe" if loading_now.is_set() else "embed", list(texts))
        return encode(self, texts)

    monkeypatch.setattr(LocalEmbedder, "load_here", loading)
    monkeypatch.setattr(LocalEmbedder, "encode", encoding)
    for name in ("__init__", "search", "rerank", "neighbors"):
        real = getattr(FeatureIndex, name)

        def recording(*args, _real=real, _name=name, **kwargs):
            rec.add(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(FeatureIndex, name, recording)
    return rec


@pytest.fixture
def server(tiny_model_dir, tmp_path, recorder: Recorder) -> Iterator[LiveServer]:
    """A server of its own (features not built yet), 20 ms per engine step, started with the
    recorder in place."""
    yield from live(tiny_settings(tiny_model_dir, tmp_path), step_delay=0.02)


def ok(r: httpx.Response):
    assert r.status_code == 200, r.text
    return r.json()


def label_texts(rec: Recorder) -> list[str]:
    """The texts of the embed calls that embedded feature labels (not queries)."""
    return [t for _, _, _, texts in rec.of("embed") if len(texts) > 1 for t in texts]


def test_encoder_index_search_rerank_neighbours_run_on_the_engine_thread(
    server: LiveServer, recorder: Recorder
) -> None:
    with httpx.Client(base_url=server.base_url, timeout=120) as http:
        hits = ok(http.post("/features/search", json={"query": "pirate", "session_id": "t"}))
        ids = [h["uuid"] for h in hits[:5]]
        body = {"query": "sea", "feature_ids": ids, "top_k": 3, "model": TINY_NAME}
        assert len(ok(http.post(f"{EMBER}/features/rerank", json=body))["features"]) == 3
        body = {"feature_indices": [hits[0]["index_in_sae"]], "top_k": 3, "model": TINY_NAME}
        ok(http.post(f"{EMBER}/attributions/neighbors", json=body))
        body = {"specification": "talk like a pirate", "model": TINY_NAME}
        assert ok(http.post(f"{EMBER}/features/auto-edits", json=body))["edits"]
    whats = {c[0] for c in recorder.calls} - {"probe"}
    assert whats == {"encoder", "embed", "__init__", "search", "rerank", "neighbors"}
    threads = {(what, thread) for what, thread, _, _ in recorder.calls}
    assert {thread for _, thread in threads} == {ENGINE_THREAD}, sorted(threads)
    # every label embedded once, in several calls of at most EMBED_CHUNK labels each
    labels = label_texts(recorder)
    assert len(labels) == len(set(labels)) == len(load_concept_data().concepts)
    sizes = [len(texts) for _, _, _, texts in recorder.of("embed") if len(texts) > 1]
    assert len(sizes) > 1 and max(sizes) <= EMBED_CHUNK


def test_a_running_generation_is_stepped_between_the_index_builds_calls(
    server: LiveServer, recorder: Recorder
) -> None:
    started = threading.Event()

    def stream() -> None:
        body = {
            "messages": [{"role": "user", "content": "Tell me a long story"}],
            "max_tokens": 400,
            "ignore_eos": True,
            "stream": True,
        }
        with httpx.Client(base_url=server.base_url, timeout=120) as http:
            with http.stream("POST", "/v1/chat/completions", json=body) as r:
                assert r.status_code == 200
                for _ in r.iter_lines():
                    started.set()

    with httpx.Client(base_url=server.base_url, timeout=120) as http:  # the dictionaries only
        ok(http.post(f"{EMBER}/features/lookup", json={"indices": [0], "model": TINY_NAME}))
    # Each embed call reads how many tokens the engine has generated so far.
    recorder.probe = lambda: server.engine.stats()["generation_tokens"]
    with ThreadPoolExecutor(1) as pool:
        generation = pool.submit(stream)
        assert started.wait(60)
        with httpx.Client(base_url=server.base_url, timeout=120) as http:
            ok(http.post("/features/search", json={"query": "pirate", "session_id": "t"}))
        generation.result()
    generated = [n for _, _, n, texts in recorder.of("embed") if len(texts) > 1]
    # 215 labels in 7 engine calls, and at least one generation step between two of them
    assert len(generated) == -(-len(load_concept_data().concepts) // EMBED_CHUNK)
    assert all(a < b for a, b in pairwise(generated)), generated


def test_requests_during_the_start_up_build_share_it(
    tiny_model_dir, tmp_path, recorder: Recorder
) -> None:
    settings = tiny_settings(tiny_model_dir, tmp_path).model_copy(
        update={"warm_features": True, "warm_features_after": 0.0}
    )
    with running(settings) as server:

        def search(query: str) -> list[dict]:
            with httpx.Client(base_url=server.base_url, timeout=120) as http:
                body = {"query": query, "session_id": "t", "top_k": 5}
                return ok(http.post("/features/search", json=body))

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(search, ["pirate", "ocean", "anger", "cooking"]))
    assert [len(r) for r in results] == [5, 5, 5, 5]
    # one build: the model loaded once, each label embedded once, one index
    assert len(recorder.of("encoder")) == 1
    labels = label_texts(recorder)
    assert len(labels) == len(set(labels)) == len(load_concept_data().concepts)
    assert len(recorder.of("__init__")) == 1


def test_inspection_and_contrast_read_activations_on_the_engine_thread(
    tiny_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    real = ConceptDictionary.activations

    def recording(self, h):
        threads.append(threading.current_thread().name)
        return real(self, h)

    monkeypatch.setattr(ConceptDictionary, "activations", recording)
    hi = {"role": "user", "content": "Hi"}
    pairs = [
        [[hi, {"role": "assistant", "content": "Hello! How can I help?"}]],
        [[hi, {"role": "assistant", "content": "Ahoy matey! Arr!"}]],
    ]
    with httpx.Client(base_url=tiny_server.base_url, timeout=120) as http:
        body = {"messages": [hi], "session_id": "threads"}
        ok(http.post("/features/inspect", json=body))
        body = {"dataset_1": pairs[0], "dataset_2": pairs[1], "model": TINY_NAME}
        ok(http.post(f"{EMBER}/chat-attribution/contrast", json=body))
    assert len(threads) == 3 and set(threads) == {ENGINE_THREAD}, threads


def test_ember_logits_are_ranked_on_the_engine_thread(
    tiny_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The vocabulary's sort (49k tokens on the real model) starts an OpenMP team on any
    thread that runs it: it runs inside the capture's engine call."""
    threads: list[str] = []
    real = torch.argsort

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "argsort", recording)
    hi = [{"role": "user", "content": "Hi"}]
    with httpx.Client(base_url=tiny_server.base_url, timeout=120) as http:
        body = {"messages": hi, "model": TINY_NAME, "top_k": 5}
        ranked = ok(http.post(f"{EMBER}/chat-attribution/compute-logits", json=body))["logits"]
        some = list(ranked)[:2]
        body = {**body, "top_k": None, "filter_vocabulary": some}
        only = ok(http.post(f"{EMBER}/chat-attribution/compute-logits", json=body))["logits"]
    assert list(ranked.values()) == sorted(ranked.values(), reverse=True) and len(ranked) == 5
    assert set(only) == set(some)
    assert threads == [ENGINE_THREAD, ENGINE_THREAD]
