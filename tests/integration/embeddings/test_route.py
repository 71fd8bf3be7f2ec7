"""POST /v1/embeddings through the official openai package and over plain HTTP: inputs,
dimensions and their policy, encoding formats, usage, the cache, and the errors."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest
from sentence_transformers import SentenceTransformer

from glassbox.embeddings.embedder import default_model_path

MODEL = "all-MiniLM-L6-v2"
TEXTS = ["The cat sat on the mat.", "Quarterly revenue grew by 12%.", "¡Hola, mundo!"]


@pytest.fixture(scope="module")
def reference() -> SentenceTransformer:
    return SentenceTransformer(str(default_model_path()), device="cpu", local_files_only=True)


@pytest.fixture
def client(embeddings_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=embeddings_server.base_url + "/v1", api_key="none")


def test_vectors_match_the_reference_model(client, reference):
    # without encoding_format the package asks for base64 and decodes it
    for encoding in ("float", openai.NOT_GIVEN):
        reply = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format=encoding)
        assert [d.index for d in reply.data] == [0, 1, 2] and reply.model == MODEL
        got = np.array([d.embedding for d in reply.data], dtype=np.float32)
        want = reference.encode(TEXTS, normalize_embeddings=True)
        cosines = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cosines.min() >= 0.999, cosines
        tokens = sum(len(reference.tokenizer(t)["input_ids"]) for t in TEXTS)
        assert reply.usage.prompt_tokens == tokens


def test_token_ids_are_decoded_with_the_models_tokenizer(embeddings_server, reference):
    ids = reference.tokenizer.encode("a red bicycle", add_special_tokens=False)
    url = embeddings_server.base_url + "/v1/embeddings"
    by_ids = httpx.post(url, json={"input": [ids, ids[:1]]}).json()
    by_text = httpx.post(
        url, json={"input": ["a red bicycle", reference.tokenizer.decode(ids[:1])]}
    )
    assert np.allclose(
        [d["embedding"] for d in by_ids["data"]],
        [d["embedding"] for d in by_text.json()["data"]],
        atol=1e-6,
    )
    one = httpx.post(url, json={"input": ids}).json()
    assert len(one["data"]) == 1
    assert np.allclose(one["data"][0]["embedding"], by_ids["data"][0]["embedding"], atol=1e-6)
    bad = httpx.post(url, json={"input": [10**9]})
    assert bad.status_code == 400 and "outside the vocabulary" in bad.json()["error"]["message"]


def test_dimensions_and_the_policies(embeddings_server):
    url = embeddings_server.base_url + "/v1/embeddings"
    full = np.array(httpx.post(url, json={"input": "x y z"}).json()["data"][0]["embedding"])
    short = httpx.post(url, json={"input": "x y z", "dimensions": 64}).json()["data"][0]
    vector = np.array(short["embedding"])
    assert vector.shape == (64,) and np.isclose(np.linalg.norm(vector), 1, atol=1e-5)
    assert np.allclose(vector, full[:64] / np.linalg.norm(full[:64]), atol=1e-5)
    more = {"input": "x y z", "dimensions": 500}
    r = httpx.post(url, json=more)
    assert r.status_code == 400 and "'pad'" in r.json()["error"]["message"]
    padded = np.array(httpx.post(url, json={**more, "dimension_policy": "pad"}).json()["data"][0]
                      ["embedding"])  # fmt: skip
    assert padded.shape == (500,) and np.allclose(padded[:384], full, atol=1e-6)
    assert not padded[384:].any()
    ignored = httpx.post(url, json={**more, "dimension_policy": "ignore"}).json()
    assert len(ignored["data"][0]["embedding"]) == 384


def test_base64_is_float32_little_endian(embeddings_server):
    url = embeddings_server.base_url + "/v1/embeddings"
    floats = httpx.post(url, json={"input": "hello"}).json()["data"][0]["embedding"]
    b64 = httpx.post(url, json={"input": "hello", "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(decoded, np.array(floats, dtype=np.float32))


def test_the_cache_answers_repeats_and_can_be_cleared(embeddings_server):
    base = embeddings_server.base_url
    httpx.delete(base + "/v1/embeddings/cache")
    text = {"input": ["a sentence for the cache test", "a sentence for the cache test"]}
    first = httpx.post(base + "/api/v1/embeddings", json=text).json()
    stats = httpx.get(base + "/v1/embeddings/cache").json()
    assert stats["size"] == 1 and stats["misses"] >= 1
    second = httpx.post(base + "/v1/embeddings", json=text).json()
    after = httpx.get(base + "/v1/embeddings/cache").json()
    assert after["hits"] == stats["hits"] + 2 and first["data"] == second["data"]
    cleared = httpx.delete(base + "/v1/embeddings/cache").json()
    assert cleared["size"] == 0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": []}, "input"),
        ({"input": [""]}, "input"),
        ({"input": "x", "model": "text-embedding-9"}, "model"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": ["x", 3]}, "input"),
        ({"input": "x", "typo": 1}, "typo"),
    ],
)
def test_bad_requests_are_clear_4xx(embeddings_server, body, param):
    r = httpx.post(embeddings_server.base_url + "/v1/embeddings", json=body)
    assert 400 <= r.status_code < 500, r.text
    error = r.json()["error"]
    assert error["param"] is None or param in error["param"], error


def test_the_embedding_model_is_listed(client):
    cards = {m.id: m for m in client.models.list().data}
    assert cards[MODEL].model_extra["capabilities"] == ["embeddings"]
    assert "sentence-transformers/all-MiniLM-L6-v2" in cards
