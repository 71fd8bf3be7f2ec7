"""tools / tool_choice / parallel_tool_calls through the official openai client: calls in
OpenAI's shape, constrained to each tool's schema, streamed as OpenAI streams them."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest
from helpers.server import TINY_NAME, LiveServer, live, tiny_settings
from helpers.tiny_model import build_tiny_model

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "unit": {"enum": ["C", "F"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
    },
}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def long_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The tiny model with a context of 2,048 tokens: its tokenizer spends about one token
    per character, and the prompt that offers two tools is ~500 of them."""
    model = build_tiny_model(tmp_path_factory.mktemp("tiny-long"), max_positions=2048)
    settings = tiny_settings(model, tmp_path_factory.mktemp("cache"))
    yield from live(settings.model_copy(update={"max_model_len": 2048}))


@pytest.fixture
def client(long_server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=long_server.base_url + "/v1", api_key="x", max_retries=0) as c:
        yield c


@pytest.fixture
def http(long_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=long_server.base_url, timeout=30) as c:
        yield c


def check_call(call) -> None:
    assert call.type == "function" and call.id.startswith("call_")
    args = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        assert set(args) == {"city", "unit"} and args["unit"] in ("C", "F")
        assert isinstance(args["city"], str) and len(args["city"]) <= 10
    else:
        assert call.function.name == "get_time" and args == {}


def complete_calls(choice) -> list:
    """The calls of a choice that are complete: with parallel calls a random model may go
    on calling until max_tokens, and the call it was writing then is cut short."""
    calls = choice.message.tool_calls or []
    if choice.finish_reason == "tool_calls":
        return calls
    assert choice.finish_reason == "length" and len(calls) >= 2
    return calls[:-1]


def create(client: openai.OpenAI, **kw):
    kw = {"model": TINY_NAME, "messages": MESSAGES, "tools": [WEATHER, TIME],
          "max_tokens": 150, "seed": 1, **kw}  # fmt: skip
    return client.chat.completions.create(**kw)


@pytest.mark.parametrize("seed", range(4))
def test_required_gives_calls_in_openai_shape(client: openai.OpenAI, seed: int) -> None:
    r = create(client, tool_choice="required", seed=seed)
    [choice] = r.choices
    for call in complete_calls(choice):
        check_call(call)
    assert len({c.id for c in choice.message.tool_calls}) == len(choice.message.tool_calls)


def test_a_named_function_is_the_one_called(client: openai.OpenAI) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    for seed in range(3):
        r = create(client, tool_choice=named, seed=seed)
        calls = r.choices[0].message.tool_calls
        assert calls and {c.function.name for c in calls} == {"get_time"}
        for call in complete_calls(r.choices[0]):
            check_call(call)


def test_without_parallel_calls_there_is_exactly_one(client: openai.OpenAI) -> None:
    for seed in range(4):
        r = create(client, tool_choice="required", parallel_tool_calls=False, seed=seed)
        assert r.choices[0].finish_reason == "tool_calls"
        [call] = r.choices[0].message.tool_calls
        check_call(call)


def test_none_answers_in_text(client: openai.OpenAI) -> None:
    r = create(client, tool_choice="none", max_tokens=10)
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")


def test_auto_answers_in_text_or_in_calls(client: openai.OpenAI) -> None:
    kinds = set()
    for seed in range(6):
        choice = create(client, tool_choice="auto", seed=seed, max_tokens=40).choices[0]
        if choice.message.tool_calls:
            for call in complete_calls(choice):
                check_call(call)
            kinds.add("call")
        else:
            assert not choice.message.content.startswith("<")
            kinds.add("text")
    assert kinds  # each answer was one or the other, never a broken call


def test_a_streamed_call_assembles_as_sdk_users_assemble_it(client: openai.OpenAI) -> None:
    kw = {"tool_choice": "required", "parallel_tool_calls": False, "seed": 2}
    whole = create(client, **kw).choices[0].message.tool_calls
    stream = create(client, stream=True, **kw)
    calls: dict[int, dict] = {}
    finish = None
    argument_chunks = 0
    for chunk in stream:
        delta = chunk.choices[0].delta
        for tc in delta.tool_calls or []:
            if tc.index not in calls:  # the first delta of a call: id, type and name
                assert tc.id and tc.type == "function" and tc.function.name
                calls[tc.index] = {"id": tc.id, "name": tc.function.name, "arguments": ""}
            else:
                assert tc.id is None and tc.function.name is None
                argument_chunks += 1
            calls[tc.index]["arguments"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert [(c["name"], c["arguments"]) for c in calls.values()] == [
        (c.function.name, c.function.arguments) for c in whole
    ]
    assert argument_chunks > 1  # arguments arrive as they are generated


def test_a_tool_result_continues_the_conversation(client: openai.OpenAI, http) -> None:
    first = create(client, tool_choice="required", parallel_tool_calls=False).choices[0]
    call = first.message.tool_calls[0]
    messages = [
        *MESSAGES,
        first.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 degrees"},
    ]
    r = create(client, messages=messages, tool_choice="none", max_tokens=8)
    assert r.choices[0].message.content and r.choices[0].message.tool_calls is None
    # The prompt holds the call and the result, in the documented format.
    rendered = http.post("/tokenize", json={"messages": [{"role": "user", "content": "x"}]}).json()[
        "count"
    ]
    assert r.usage.prompt_tokens > rendered + 10


def test_bad_tool_requests_are_400s(client: openai.OpenAI) -> None:
    cases = [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [WEATHER, WEATHER], "tool_choice": "required"}, "tools"),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as exc:
            create(client, **extra)
        assert exc.value.body["param"] == param
    bad_args = [
        *MESSAGES,
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": "{x"},
                }
            ],
        },
    ]
    with pytest.raises(openai.BadRequestError) as exc:
        create(client, messages=bad_args)
    assert exc.value.body["param"] == "messages"


def test_a_recursive_tool_schema_is_enforced(client: openai.OpenAI) -> None:
    # its $refs used to break inside the call grammar: "Pointer '/$defs/node' does not exist"
    node = {"type": "object", "properties": {"label": {"type": "string", "maxLength": 5},
            "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}},
            "required": ["label"]}  # fmt: skip
    tree = {"type": "function", "function": {"name": "plant", "parameters": {
        "$defs": {"node": node}, "$ref": "#/$defs/node"}}}  # fmt: skip

    def check(value, depth=0) -> None:
        assert isinstance(value, dict) and set(value) <= {"label", "children"}, value
        assert isinstance(value["label"], str) and len(value["label"]) <= 5
        assert len(value.get("children", [])) <= 2 and depth < 50
        for child in value.get("children", []):
            check(child, depth + 1)

    complete = 0
    for seed in range(4):
        r = create(client, tools=[tree], tool_choice="required", parallel_tool_calls=False,
                   seed=seed, max_tokens=400)  # fmt: skip
        [choice] = r.choices
        if choice.finish_reason == "length":
            continue  # a random model may grow the tree past max_tokens
        [call] = choice.message.tool_calls
        assert call.function.name == "plant"
        check(json.loads(call.function.arguments))
        complete += 1
    assert complete >= 1


def test_a_tool_schema_that_admits_no_value_is_a_400(client: openai.OpenAI) -> None:
    loop = {"type": "function", "function": {"name": "loop", "parameters": {"$ref": "#"}}}
    for choice in ("auto", "required"):
        with pytest.raises(openai.BadRequestError) as exc:
            create(client, tools=[WEATHER, loop], tool_choice=choice)
        assert exc.value.body["param"] == "tools[1].function.parameters"
        assert "$ref cycle" in exc.value.body["message"]
