"""Structured output and tool calls on the real bundled model (SmolLM2-135M-Instruct),
through the official openai package. Slow: deselect with -m 'not slow'."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import openai
import pytest
from helpers.live_server import serve_in_thread
from pydantic import ValidationError
from schemas import SCHEMAS, Person, response_format

from glassbox.app import create_app
from glassbox.config import Settings
from glassbox.runtime import resolve

pytestmark = pytest.mark.slow

MODEL = "SmolLM2-135M-Instruct"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
CONVERT = {
    "type": "function",
    "function": {
        "name": "convert_currency",
        "description": "Convert an amount of money",
        "parameters": {
            "type": "object",
            "properties": {
                "amount": {"type": "number", "minimum": 0},
                "currency": {"enum": ["EUR", "USD", "GBP"]},
            },
            "required": ["amount", "currency"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    resolve(Settings(model="bundled"))  # converts the bundled GGUF once
    settings = Settings(model="bundled", warm_features=False)
    with serve_in_thread(create_app(settings), startup_timeout=600) as base:
        yield base


@pytest.fixture
def client(url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_100_schema_requests_at_temperature_1_all_validate(url: str) -> None:
    """20 requests for each of the 5 schemas of benchmarks/schemas.py, all at once."""

    async def run() -> list[tuple[type, str, str]]:
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as c:

            async def one(model, prompt: str, seed: int):
                r = await c.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": prompt}],
                    response_format=response_format(model), temperature=1.0, seed=seed,
                    max_tokens=400, timeout=600,
                )  # fmt: skip
                return model, r.choices[0].finish_reason, r.choices[0].message.content

            jobs = [one(m, p, s) for m, p in SCHEMAS for s in range(20)]
            return await asyncio.gather(*jobs)

    results = asyncio.run(run())
    assert len(results) == 100
    invalid = []
    for model, reason, content in results:
        try:
            model.model_validate_json(content)
        except ValidationError as exc:
            invalid.append((model.__name__, reason, content, str(exc)))
    assert not invalid, invalid
    assert {reason for _, reason, _ in results} == {"stop"}


def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    r = client.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": SCHEMAS[0][1]}],
        response_format=Person, temperature=0.7, seed=1, max_tokens=300,
    )  # fmt: skip
    assert isinstance(r.choices[0].message.parsed, Person)


def test_a_scripted_tool_conversation(client: openai.OpenAI) -> None:
    """Required call -> the tool's result -> an answer; a named call; a streamed call."""
    messages = [{"role": "user", "content": "What's the weather like in Paris today?"}]
    tools = [WEATHER, CONVERT]
    first = client.chat.completions.create(
        model=MODEL, messages=messages, tools=tools, tool_choice="required",
        parallel_tool_calls=False, temperature=0, max_tokens=100,
    )  # fmt: skip
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name in ("get_weather", "convert_currency")
    json.loads(call.function.arguments)
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees celsius, light rain"},
    ]
    answer = client.chat.completions.create(
        model=MODEL, messages=messages, tools=tools, tool_choice="none", temperature=0,
        max_tokens=60,
    )  # fmt: skip
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls

    named = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Change 20 euros into dollars."}],
        tools=tools, tool_choice={"type": "function", "function": {"name": "convert_currency"}},
        parallel_tool_calls=False, temperature=0, max_tokens=100,
    )  # fmt: skip
    [conv] = named.choices[0].message.tool_calls
    args = json.loads(conv.function.arguments)
    assert conv.function.name == "convert_currency" and args["currency"] in ("EUR", "USD", "GBP")

    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather in Tokyo, please."}],
        tools=tools, tool_choice="required", parallel_tool_calls=False, temperature=0,
        max_tokens=100, stream=True,
    )  # fmt: skip
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        for tc in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            entry["id"] = entry["id"] or tc.id
            entry["name"] += tc.function.name or ""
            entry["arguments"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    [streamed] = calls.values()
    assert streamed["id"].startswith("call_")
    assert streamed["name"] in ("get_weather", "convert_currency")
    json.loads(streamed["arguments"])


def test_schema_with_a_path_error_is_a_400(client: openai.OpenAI) -> None:
    bad = {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integr"}}}}
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": bad}},
        )  # fmt: skip
    assert "'/properties/a/items/type'" in exc.value.body["message"]


def test_a_session_with_a_schema_answers_json_on_every_turn(url: str) -> None:
    model, prompt = SCHEMAS[4]  # Reading
    fmt = response_format(model)
    with httpx.Client(base_url=url, timeout=300) as http:
        r = http.post("/llm/chat/", json={
            "user_id": "e2e", "initial_message": prompt, "response_format": fmt,
            "temperature": 1.0, "seed": 3, "max_tokens": 300,
        })  # fmt: skip
        assert r.status_code == 200, r.text
        sid = r.json()["session_id"]
        replies = [r.json()["message"]]
        for text in ["Now the station in Bergen.", "And one in Tromsø, please.", "Once more."]:
            r = http.post(f"/llm/chat/{sid}/message/", json={"user_message": text})
            assert r.status_code == 200, r.text
            replies.append(r.json()["response_message"])
            assert r.json()["usage"]["cached_tokens"] > 0
        for reply in replies:
            model.model_validate_json(reply)
