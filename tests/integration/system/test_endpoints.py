"""/v1/models, model names and aliases, /tokenize + /detokenize, /health."""

from __future__ import annotations

import openai
import pytest
from fastapi.testclient import TestClient
from helpers.server import TINY_ALIAS, TINY_MAX_LEN, TINY_NAME, tiny_settings

from glassbox.app import create_app
from glassbox.engine.async_engine import AsyncLLMEngine
from glassbox.runtime import load_engine


def test_models_list_has_served_name_and_aliases(client: openai.OpenAI) -> None:
    models = client.models.list()
    generation = {m.id for m in models.data if "embeddings" not in m.model_extra["capabilities"]}
    assert generation == {TINY_NAME, TINY_ALIAS}
    assert all(m.object == "model" for m in models.data)
    assert client.models.retrieve(TINY_ALIAS).id == TINY_ALIAS


def test_alias_serves_the_model(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    via_alias = client.chat.completions.create(
        model=TINY_ALIAS, messages=messages, max_tokens=4, temperature=0
    )
    direct = client.chat.completions.create(
        model=TINY_NAME, messages=messages, max_tokens=4, temperature=0
    )
    assert via_alias.model == TINY_ALIAS
    assert via_alias.choices[0].message.content == direct.choices[0].message.content


def test_unknown_model_is_404_model_not_found(client: openai.OpenAI, http) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "model_not_found"
    r = http.get("/v1/models/gpt-5")
    assert r.status_code == 404
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "model_not_found" and "gpt-5" in error["message"]
    r = http.post("/v1/completions", json={"model": "nope", "prompt": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_tokenize_detokenize_round_trip(http) -> None:
    text = "Hello world! The quick brown fox."
    r = http.post("/tokenize", json={"prompt": text, "add_special_tokens": False})
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == len(body["tokens"]) > 0
    assert body["max_model_len"] == TINY_MAX_LEN
    back = http.post("/detokenize", json={"tokens": body["tokens"]})
    assert back.json() == {"prompt": text}


def test_tokenize_messages_applies_the_chat_template(http) -> None:
    messages = [{"role": "user", "content": "Hello"}]
    chat = http.post("/tokenize", json={"messages": messages}).json()
    plain = http.post("/tokenize", json={"prompt": "Hello", "add_special_tokens": False}).json()
    assert chat["count"] > plain["count"]
    text = http.post("/detokenize", json={"tokens": chat["tokens"]}).json()["prompt"]
    assert "user" in text and "Hello" in text and "assistant" in text


def test_tokenize_needs_exactly_one_input(http) -> None:
    r = http.post("/tokenize", json={})
    assert r.status_code == 400 and "exactly one" in r.json()["error"]["message"]


def test_detokenize_rejects_ids_outside_the_vocabulary(http) -> None:
    r = http.post("/detokenize", json={"tokens": [1, 10**6]})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "tokens"


def test_health(http, tiny_server) -> None:
    r = http.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["model"] == TINY_NAME
    assert body["kv_blocks_total"] == tiny_server.engine.stats()["kv_blocks_total"] > 0


def test_health_is_503_once_the_engine_has_died(tiny_model_dir, tmp_path) -> None:
    engine = AsyncLLMEngine(lambda: load_engine(tiny_settings(tiny_model_dir, tmp_path))[0])
    app = create_app(tiny_settings(tiny_model_dir, tmp_path), engine=engine)
    with TestClient(app) as tc:
        assert tc.get("/health").status_code == 200
        engine.shutdown()
        r = tc.get("/health")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "engine_dead"
