"""A model served by llama-cpp beside the local one, through the server's routes: OpenAI
chat (streamed and not), json_schema output, a session, and the capabilities refused.
Slow: it loads the bundled GGUF into llama.cpp."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import jsonschema
import openai
import pytest
from helpers.server import LiveServer, running, tiny_settings

from glassbox.config import ModelSpec

pytestmark = pytest.mark.slow

CPP = "smol-cpp"
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "sunny": {"type": "boolean"}},
    "required": ["city", "sunny"],
}


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory) -> Iterator[LiveServer]:
    pytest.importorskip("llama_cpp")
    spec = ModelSpec(name=CPP, backend="llama-cpp", path="bundled", max_model_len=1024)
    settings = tiny_settings(tiny_model_dir, tmp_path_factory.mktemp("cpp"))
    with running(settings.model_copy(update={"models": [spec]})) as live:
        yield live


def test_chat_streamed_and_not(server):
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="none")
    ask = {"model": CPP, "max_tokens": 12, "temperature": 0,
           "messages": [{"role": "user", "content": "What is the capital of France?"}]}  # fmt: skip
    reply = client.chat.completions.create(**ask)
    assert reply.model == CPP and reply.choices[0].message.content.strip()
    chunks = list(client.chat.completions.create(stream=True, **ask))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content
    card = client.models.retrieve(CPP)
    assert card.model_extra["backend"] == "llama-cpp" and card.model_extra["max_model_len"] == 1024


def test_json_schema_output(server):
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="none")
    reply = client.chat.completions.create(
        model=CPP,
        messages=[{"role": "user", "content": "Describe the weather in Paris."}],
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA}},
    )
    jsonschema.validate(json.loads(reply.choices[0].message.content), SCHEMA)


def test_a_session_and_what_llama_cpp_cannot_do(server):
    start = {"user_id": "c", "initial_message": "Hi, I am Ada.", "model": CPP, "max_tokens": 20}
    r = httpx.post(server.base_url + "/llm/chat/", json=start, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["session"]["model"] == CPP and r.json()["message"]
    sid = r.json()["session_id"]
    r = httpx.post(
        f"{server.base_url}/llm/chat/{sid}/message/", json={"user_message": "Name?"}, timeout=120
    )
    assert r.status_code == 200, r.text
    r = httpx.post(
        server.base_url + "/v1/chat/completions",
        json={"model": CPP, "messages": [{"role": "user", "content": "x"}], "n": 2},
    )
    assert r.status_code == 400 and "llama-cpp" in r.json()["error"]["message"], r.text
    r = httpx.post(server.base_url + "/states", json={"model_id": CPP, "text": "x"})
    error = r.json()["error"]
    assert r.status_code == 400 and "'llama-cpp' backend" in error["message"], r.text
