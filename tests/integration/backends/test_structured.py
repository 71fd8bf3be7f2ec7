"""Pydantic models and function calls from real backends: the local engine (tiny model, and
the bundled one, slow) and an OpenAI-compatible upstream that is a second glassbox server,
once enforcing `response_format` and tools itself and once with the backend's flags off
(schema and tools in the prompt, validated, retried)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path

import httpx
import jsonschema
import pytest
from helpers.server import LiveServer, running, tiny_settings
from pydantic import BaseModel, Field

from glassbox.backends import create_backend
from glassbox.backends.local import LocalBackend
from glassbox.backends.openai_upstream import OpenAIUpstreamBackend
from glassbox.config import Settings
from glassbox.engine.async_engine import AsyncLLMEngine
from glassbox.errors import InvalidOutput
from glassbox.runtime import load_engine
from glassbox.structured.calls import FunctionCall, tools_from, wire_tool
from glassbox.structured.outputs import generate_model, response_format
from glassbox.structured.tools import system_text


class Size(StrEnum):
    small = "small"
    large = "large"


class Part(BaseModel):
    name: str = Field(max_length=6)
    count: int = Field(ge=0, le=9)


class Order(BaseModel):
    """Every kind of field a schema has: an enum, a bool, a bounded number, an array of
    objects, an optional field. Strings are short: the tiny model writes noise, and a
    string it need not close would run to max_tokens."""

    size: Size
    gift: bool
    parts: list[Part] = Field(min_length=1, max_length=2)
    note: str | None = Field(None, max_length=5)
    price: float = Field(ge=0, le=100)


ASK = [{"role": "user", "content": "Give me an order."}]
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two numbers",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {"type": "integer", "minimum": 0, "maximum": 99},
                "b": {"type": "integer", "minimum": 0, "maximum": 99},
            },
            "required": ["a", "b"],
        },
        "strict": True,  # no keys beyond a and b: the tiny model would add some
    },
}
CLOCK = {"type": "function", "function": {"name": "now", "description": "The time", "strict": True}}
SUM = [{"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The tiny model served live with a context of 2,048 tokens: the documented tool
    format's system prompt alone is about 500 of the tiny tokenizer's tokens."""
    settings = tiny_settings(tiny_model_dir, tmp_path_factory.mktemp("cache"))
    with running(settings.model_copy(update={"max_model_len": 2048})) as live:
        yield live


@pytest.fixture
def local(server: LiveServer) -> LocalBackend:
    """The local backend over the server's engine (in this process), its own grammars."""
    return create_backend("local", engine=server.engine)


def _valid_order(order: Order) -> None:
    assert isinstance(order, Order) and 1 <= len(order.parts) <= 2
    schema = response_format(Order)["json_schema"]["schema"]
    jsonschema.validate(json.loads(order.model_dump_json()), schema)


# --- the local engine ---------------------------------------------------------------------


async def test_local_backend_returns_validated_instances(local):
    """Constrained: the tiny random model's first answer validates, every time."""
    for _ in range(3):
        order = await generate_model(local, ASK, Order, max_retries=0, temperature=1.0)
        _valid_order(order)


async def test_local_function_call_returns_validated_calls(local):
    for choice in ("add", "required"):
        calls = await local.function_call(
            SUM, [ADD, CLOCK], choice, parallel_tool_calls=False, temperature=1.0
        )
        assert len(calls) == 1 and isinstance(calls[0], FunctionCall)
        if choice == "add":
            assert calls[0].name == "add"
        if calls[0].name == "add":
            assert set(calls[0].arguments) == {"a", "b"}
            assert all(0 <= v <= 99 for v in calls[0].arguments.values())
        else:
            assert calls[0].arguments == {}
    # The conversation goes on with the call and its result, in OpenAI's shape.
    call = (await local.function_call(SUM, [ADD], "add", temperature=1.0))[0]
    follow = [
        *SUM,
        {"role": "assistant", "content": None, "tool_calls": [call.wire()]},
        {"role": "tool", "tool_call_id": call.id, "content": str(sum(call.arguments.values()))},
    ]
    again = await local.function_call(follow, [ADD], "required", temperature=1.0)
    assert again and all(c.name == "add" and set(c.arguments) == {"a", "b"} for c in again)


async def test_local_tool_calls_cut_short_are_an_error(local):
    start = '<tool_call>{"name":"add","arguments":{"a":'
    for max_tokens in (4, 40):  # cut inside the tag, and further on
        with pytest.raises(InvalidOutput, match=rf"reached max_tokens \({max_tokens}\)") as caught:
            await local.function_call(SUM, [ADD], "add", max_tokens=max_tokens)
        text = caught.value.output
        assert start.startswith(text) or text.startswith(start)
        assert "</tool_call>" not in text


# --- an upstream glassbox -----------------------------------------------------------------


def _upstream(server: LiveServer, **flags) -> OpenAIUpstreamBackend:
    """The backend, with the bodies it sent (`sent`) and the messages the upstream answered
    with (`replies`)."""
    sent: list[dict] = []
    replies: list[dict] = []

    async def record(request: httpx.Request) -> None:
        sent.append(json.loads(request.content))

    async def reply(response: httpx.Response) -> None:
        await response.aread()
        if response.is_success:
            replies.append(response.json()["choices"][0]["message"])

    client = httpx.AsyncClient(timeout=60, event_hooks={"request": [record], "response": [reply]})
    backend = create_backend(
        "openai-upstream",
        base_url=server.base_url + "/v1",
        model=server.settings.served_model_name,
        client=client,
        **flags,
    )
    backend.sent, backend.replies = sent, replies
    return backend


@pytest.fixture
async def upstream(server: LiveServer):
    backend = _upstream(server)
    yield backend
    await backend.client.aclose()


@pytest.fixture
async def plain_upstream(server: LiveServer):
    """The same server, used as one that enforces nothing: both flags off."""
    backend = _upstream(server, supports_json_schema=False, supports_tools=False)
    yield backend
    await backend.client.aclose()


async def test_upstream_constrains_with_response_format(upstream):
    order = await generate_model(upstream, ASK, Order, max_retries=0, temperature=1.0)
    _valid_order(order)
    (body,) = upstream.sent
    assert body["response_format"] == response_format(Order)
    assert body["messages"] == ASK
    assert Order.model_validate_json(upstream.replies[0]["content"]) == order


async def test_upstream_without_grammar_validates_retries_then_raises(plain_upstream):
    """The tiny model writes no JSON unconstrained: each answer is sent back with its errors,
    twice, and the third is the error's."""
    with pytest.raises(InvalidOutput) as caught:
        await generate_model(plain_upstream, ASK, Order, max_tokens=24, temperature=1.0)
    error = caught.value
    assert error.attempts == 3 and len(plain_upstream.sent) == 3
    assert error.output == plain_upstream.replies[-1]["content"]
    assert str(error).startswith("the model's answer did not validate against Order after 3")
    first, second, third = plain_upstream.sent
    assert all("response_format" not in body for body in plain_upstream.sent)
    schema = json.dumps(response_format(Order)["json_schema"]["schema"], separators=(",", ":"))
    assert first["messages"][0]["role"] == "system" and schema in first["messages"][0]["content"]
    assert first["messages"][1:] == ASK
    for before, after, reply in zip(
        (first, second), (second, third), plain_upstream.replies, strict=False
    ):
        assert after["messages"][: len(before["messages"])] == before["messages"]
        answer, feedback = after["messages"][len(before["messages"]) :]
        assert answer == {"role": "assistant", "content": reply["content"]}
        assert feedback["role"] == "user"
        assert feedback["content"].startswith("That answer is not valid:\n- ")


async def test_upstream_function_call_uses_the_servers_tools(upstream):
    for parallel in (True, False):  # the model may make several calls only when parallel
        calls = await upstream.function_call(
            SUM, [ADD, CLOCK], "add", parallel_tool_calls=parallel, temperature=1.0
        )
        assert calls and all(c.name == "add" for c in calls) and (parallel or len(calls) == 1)
        assert all(0 <= v <= 99 for c in calls for v in c.arguments.values())
        body = upstream.sent[-1]
        assert body["tools"] == [wire_tool(t) for t in tools_from([ADD, CLOCK])]
        assert body["tool_choice"] == {"type": "function", "function": {"name": "add"}}
        assert body["parallel_tool_calls"] is parallel
        wire = upstream.replies[-1]["tool_calls"]
        assert [c.id for c in calls] == [w["id"] for w in wire]
        assert [c.arguments for c in calls] == [
            json.loads(w["function"]["arguments"]) for w in wire
        ]


async def test_upstream_without_tools_offers_them_in_the_prompt(plain_upstream):
    """Unconstrained, the tiny model writes no call: with "required" that is the error."""
    with pytest.raises(InvalidOutput, match="asks for a call and the model made none") as caught:
        await plain_upstream.function_call(SUM, [ADD], "required", max_tokens=16)
    (body,) = plain_upstream.sent
    assert "tools" not in body and "tool_choice" not in body
    system = body["messages"][0]
    assert system == {"role": "system", "content": system_text(tools_from([ADD]), "required")}
    assert caught.value.output == plain_upstream.replies[0]["content"]


# --- the bundled model --------------------------------------------------------------------


class Capital(BaseModel):
    country: str = Field(max_length=20)
    capital: str = Field(max_length=20)


@pytest.mark.slow
async def test_bundled_model_answers_with_a_capital():
    """Constrained, the schema's keys are written for the model: it fills in the values."""
    engine = AsyncLLMEngine(lambda: load_engine(Settings(model="bundled"))[0])
    try:
        backend = LocalBackend(engine)
        question = [{"role": "user", "content": "What is the capital of France?"}]
        answer = await generate_model(backend, question, Capital, max_retries=0, temperature=0.0)
        assert answer.capital == "Paris" and answer.country.lower() == "france"
    finally:
        engine.shutdown()
