"""glassbox in front of two other glassbox processes, its `openai-upstream` fallback chain:
chat (streamed and not), sessions and json_schema output through the front; with the first
upstream stopped the second answers; with none left, a 503 that says so."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest
from helpers.processes import ServerProcess, servers
from helpers.server import TINY_NAME, LiveServer, running, tiny_settings

from glassbox.backends import modulate_sampling
from glassbox.config import ModelSpec
from glassbox.features.emotion import EmotionalState

REMOTE = "remote-tiny"
MESSAGES = [{"role": "user", "content": "Say something."}]
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
    "required": ["answer", "sure"],
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": SCHEMA}}


def started_upstreams(tmp: Path, model_dir: Path):
    return servers((tmp / "a", model_dir, {}), (tmp / "b", model_dir, {}))


@contextmanager
def front_of(upstreams: list[ServerProcess], model_dir: Path, tmp: Path) -> Iterator[LiveServer]:
    """An in-process glassbox whose model REMOTE is served by the upstreams, in order."""
    spec = ModelSpec(
        name=REMOTE,
        backend="openai-upstream",
        aliases=["remote-alias"],
        upstreams=[{"base_url": u.url + "/v1", "model": TINY_NAME} for u in upstreams],
        max_model_len=512,
        retries=1,
        backoff=0.05,
    )
    settings = tiny_settings(model_dir, tmp)
    with running(settings.model_copy(update={"models": [spec]})) as server:
        yield server


@pytest.fixture(scope="module")
def upstreams(tiny_model_dir, tmp_path_factory) -> Iterator[list[ServerProcess]]:
    with started_upstreams(tmp_path_factory.mktemp("upstreams"), tiny_model_dir) as started:
        yield started


@pytest.fixture(scope="module")
def front(upstreams, tiny_model_dir, tmp_path_factory) -> Iterator[LiveServer]:
    with front_of(upstreams, tiny_model_dir, tmp_path_factory.mktemp("front")) as server:
        yield server


def answered(upstream: ServerProcess) -> int:
    """How many chat completions the upstream has answered with a 200."""
    text = httpx.get(upstream.url + "/metrics").text
    pattern = r'glassbox_requests_total\{route="/v1/chat/completions",status="200"\} (\S+)'
    match = re.search(pattern, text)
    return int(float(match.group(1))) if match else 0


def test_models_lists_every_model_with_its_backend(front):
    cards = {m["id"]: m for m in httpx.get(front.base_url + "/v1/models").json()["data"]}
    assert cards[TINY_NAME]["backend"] == "local"
    assert "steering" in cards[TINY_NAME]["capabilities"]
    assert cards[REMOTE]["backend"] == "openai-upstream" and cards[REMOTE]["capabilities"] == []
    assert cards["remote-alias"]["root"] == REMOTE and cards[REMOTE]["max_model_len"] == 512


def test_chat_through_the_upstream_streamed_and_not(front, upstreams):
    client = openai.OpenAI(base_url=front.base_url + "/v1", api_key="none")
    before = answered(upstreams[0])
    ask = {"messages": MESSAGES, "max_tokens": 8, "temperature": 0, "seed": 1}
    reply = client.chat.completions.create(model=REMOTE, **ask)
    assert reply.model == REMOTE and reply.usage.completion_tokens > 0
    direct = httpx.post(
        upstreams[0].url + "/v1/chat/completions", json={"model": TINY_NAME, **ask}, timeout=60
    ).json()
    assert reply.choices[0].message.content == direct["choices"][0]["message"]["content"] != ""
    chunks = list(client.chat.completions.create(model="remote-alias", stream=True, **ask))
    assert {c.model for c in chunks} == {"remote-alias"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason is not None
    assert answered(upstreams[0]) == before + 3  # two relayed, one asked directly
    # The tiny random model may end at once: ignore_eos (relayed as sent) makes text certain.
    completion = client.completions.create(
        model=REMOTE, prompt="Once", max_tokens=4, extra_body={"ignore_eos": True}
    )
    assert completion.model == REMOTE and completion.choices[0].text


def test_json_schema_output_through_the_upstream(front):
    client = openai.OpenAI(base_url=front.base_url + "/v1", api_key="none")
    for seed in range(3):
        reply = client.chat.completions.create(
            model=REMOTE, messages=MESSAGES, max_tokens=40, seed=seed, response_format=FORMAT
        )
        jsonschema.validate(json.loads(reply.choices[0].message.content), SCHEMA)


def test_what_the_upstream_cannot_do_is_a_400_naming_backend_and_capability(front):
    variant = {"base_model": REMOTE, "edits": [], "scopes": []}
    r = httpx.post(
        front.base_url + "/v1/chat/completions",
        json={"model": REMOTE, "messages": MESSAGES, "variant": variant},
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "'openai-upstream' backend" in error["message"] and "'steering'" in error["message"]
    assert error["param"] == "variant" and error["code"] == "unsupported_capability"
    r = httpx.post(
        front.base_url + "/v1/chat/completions",
        json={"model": REMOTE, "messages": MESSAGES, "readout": {"features": 3}},
    )
    assert r.status_code == 400 and "'features'" in r.json()["error"]["message"], r.text
    assert r.json()["error"]["param"] == "readout"
    r = httpx.post(
        front.base_url + "/v1/completions",
        json={"model": REMOTE, "prompt": "x", "readout": {"features": 3}},
    )
    assert r.status_code == 400 and "'features'" in r.json()["error"]["message"], r.text
    assert r.json()["error"]["param"] == "readout"
    r = httpx.post(front.base_url + "/states", json={"model_id": REMOTE, "text": "x"})
    assert r.status_code == 400 and "'states'" in r.json()["error"]["message"], r.text
    r = httpx.post(front.base_url + "/tokenize", json={"model": REMOTE, "prompt": "x"})
    assert r.status_code == 400 and "'tokenize'" in r.json()["error"]["message"], r.text


def test_emotions_become_sampling_modulation(front, upstreams):
    ask = {"model": REMOTE, "messages": MESSAGES, "max_tokens": 4, "seed": 3}
    calm = {**ask, "emotional_state": {"valence": -1, "arousal": -1}}
    r = httpx.post(front.base_url + "/v1/chat/completions", json=calm, timeout=60)
    assert r.status_code == 200, r.text
    # (-1, -1) lowers temperature by 0.3 and top_p by 0.1 from OpenAI's defaults (1, 1)
    coefficients = EmotionalState(-1, -1).get_steering_coefficients()
    temperature, top_p = modulate_sampling(coefficients, 1.0, 1.0)
    assert (temperature, top_p) == pytest.approx((0.7, 0.9))
    direct = {**ask, "model": TINY_NAME, "temperature": temperature, "top_p": top_p}
    same = httpx.post(upstreams[0].url + "/v1/chat/completions", json=direct, timeout=60)
    assert r.json()["choices"][0]["message"] == same.json()["choices"][0]["message"]
    unmodulated = httpx.post(front.base_url + "/v1/chat/completions", json=ask, timeout=60)
    assert unmodulated.json()["choices"][0]["message"] != r.json()["choices"][0]["message"]


def test_a_session_on_the_upstream_model(front):
    start = {"user_id": "u", "initial_message": "hello", "model": REMOTE, "max_tokens": 30,
             "temperature": 0, "response_format": FORMAT}  # fmt: skip
    r = httpx.post(front.base_url + "/llm/chat/", json=start, timeout=60)
    assert r.status_code == 200, r.text
    sid = r.json()["session_id"]
    jsonschema.validate(json.loads(r.json()["message"]), SCHEMA)
    r = httpx.post(f"{front.base_url}/llm/chat/{sid}/message/", json={"user_message": "again"})
    assert r.status_code == 200, r.text
    jsonschema.validate(json.loads(r.json()["response_message"]), SCHEMA)
    history = httpx.get(f"{front.base_url}/llm/chat/{sid}/history/").json()
    assert [m["sender"] for m in history] == ["user", "assistant"] * 2


def test_the_fallback_chain_then_a_clear_503(tiny_model_dir, tmp_path):
    with (
        started_upstreams(tmp_path, tiny_model_dir) as upstreams,
        front_of(upstreams, tiny_model_dir, tmp_path / "front") as front,
    ):
        check_the_fallback_chain(front, upstreams)


def check_the_fallback_chain(front: LiveServer, upstreams: list[ServerProcess]) -> None:
    client = openai.OpenAI(base_url=front.base_url + "/v1", api_key="none", max_retries=0)
    ask = {"model": REMOTE, "messages": MESSAGES, "max_tokens": 4}
    upstreams[0].stop()
    before = answered(upstreams[1])
    assert client.chat.completions.create(**ask).choices[0].message.content is not None
    streamed = list(client.chat.completions.create(stream=True, **ask))
    assert streamed[-1].choices[0].finish_reason is not None
    assert answered(upstreams[1]) == before + 2
    upstreams[1].stop()
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(**ask)
    assert err.value.status_code == 503
    message = err.value.body["message"]
    assert f"no upstream of model '{REMOTE}' answered" in message
    assert upstreams[0].url in message and upstreams[1].url in message
    with pytest.raises(openai.APIStatusError) as err:
        list(client.chat.completions.create(stream=True, **ask))  # refused before streaming
    assert err.value.status_code == 503
    r = httpx.get(front.base_url + "/v1/models")  # the front itself still serves
    assert r.status_code == 200
