"""Tool calls as data: OpenAI's tools, tool_choice and messages in, validated calls out."""

from __future__ import annotations

import json

import pytest

from glassbox.errors import InvalidOutput, InvalidRequest
from glassbox.structured.calls import (
    FunctionCall,
    choice_name,
    template_messages,
    tools_from,
    validated,
    wire_choice,
    wire_tool,
    written_calls,
)
from glassbox.structured.tools import Tool, ToolCall, prompt_messages

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city"],
        },
    },
}
CLOCK = Tool("get_time", "The time", {"type": "object", "properties": {}}, strict=True)


def test_tools_from_openai_specs_and_tools():
    weather, clock = tools_from([WEATHER, CLOCK])
    assert weather == Tool(
        "get_weather", "The weather in a city", WEATHER["function"]["parameters"], False
    )
    assert clock is CLOCK
    assert wire_tool(weather) == WEATHER
    assert wire_tool(clock)["function"]["strict"] is True
    bare = tools_from([{"type": "function", "function": {"name": "ping"}}])[0]
    assert bare.parameters == {"type": "object", "properties": {}} and bare.description == ""


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        ([], "at least one tool"),
        ([{"name": "get_weather"}], r"tools\[0\] must be"),
        (["get_weather"], r"tools\[0\] must be"),
        ([{"type": "function", "function": {"description": "x"}}], "needs a 'name'"),
        ([WEATHER, WEATHER], "unique"),
        (
            [{"type": "function", "function": {"name": "f", "parameters": {"type": "objet"}}}],
            r"tools\[0\].function.parameters: invalid JSON schema",
        ),
    ],
)
def test_bad_tools_are_refused(tools, message):
    with pytest.raises(InvalidRequest, match=message) as caught:
        tools_from(tools)
    assert caught.value.param.startswith("tools")


def test_tool_choice():
    tools = tools_from([WEATHER, CLOCK])
    assert choice_name("auto", tools) == "auto" and choice_name("required", tools) == "required"
    assert choice_name("get_time", tools) == "get_time"
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert choice_name(named, tools) == "get_weather"
    assert wire_choice("get_weather") == named and wire_choice("auto") == "auto"
    for bad, message in [
        ("none", "not 'none'"),
        ("get_news", "'get_news', which is not in 'tools'"),
        ({"type": "function"}, "needs function.name"),
    ]:
        with pytest.raises(InvalidRequest, match=message) as caught:
            choice_name(bad, tools)
        assert caught.value.param == "tool_choice"


def _call(name: str, arguments: str, id: str = "call_1") -> ToolCall:
    return ToolCall(id, name, arguments)


def test_valid_calls_come_back_with_dict_arguments():
    tools = tools_from([WEATHER, CLOCK])
    calls = [_call("get_weather", '{"city":"Paris","days":3}'), _call("get_time", "", "call_2")]
    assert validated(calls, tools, "required", True, "answer") == [
        FunctionCall("call_1", "get_weather", {"city": "Paris", "days": 3}),
        FunctionCall("call_2", "get_time", {}),
    ]
    assert validated([], tools, "auto", True, "It is sunny.") == []


@pytest.mark.parametrize(
    ("calls", "choice", "parallel", "message"),
    [
        ([], "required", True, "tool_choice 'required' asks for a call and the model made none"),
        ([], "get_time", True, "tool_choice 'get_time' asks for a call"),
        (
            [_call("get_weather", '{"city":"Paris"}'), _call("get_time", "{}")],
            "auto",
            False,
            "2 calls, and parallel_tool_calls is false",
        ),
        ([_call("get_news", "{}")], "auto", True, "'get_news' is not a tool offered"),
        # a named choice offers that tool only
        ([_call("get_weather", '{"city":"Paris"}')], "get_time", True, "not a tool offered"),
        ([_call("get_weather", '{"city":')], "auto", True, "not JSON"),
        ([_call("get_weather", '["Paris"]')], "auto", True, "not a JSON object"),
        ([_call("get_weather", '{"days":2}')], "auto", True, "'city' is a required property"),
        (
            [_call("get_weather", '{"city":"Paris","days":9}')],
            "auto",
            True,
            "at days: 9 is greater than the maximum of 7",
        ),
        # a strict tool takes no keys beyond its properties
        ([_call("get_time", '{"zone":"UTC"}')], "auto", True, "Additional properties"),
    ],
)
def test_invalid_calls_are_a_clear_error(calls, choice, parallel, message):
    tools = tools_from([WEATHER, CLOCK])
    with pytest.raises(InvalidOutput, match=message) as caught:
        validated(calls, tools, choice, parallel, "the model's answer")
    assert caught.value.output == "the model's answer"
    assert str(caught.value).startswith("the model's tool calls are not valid: ")


def test_calls_written_by_an_unconstrained_model():
    text = (
        "I will look both up.\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>{"name": "get_time", "arguments": "{}"}</tool_call> Done.'
    )
    weather, clock = written_calls(text)
    assert (weather.name, json.loads(weather.arguments)) == ("get_weather", {"city": "Paris"})
    assert (clock.name, clock.arguments) == ("get_time", "{}")
    assert weather.id.startswith("call_") and weather.id != clock.id
    assert written_calls("No call. <tool_call>{unfinished") == []
    for bad, message in [
        ("<tool_call>{name: get_time}</tool_call>", "a call is not JSON"),
        ('<tool_call>{"arguments": {}}</tool_call>', "a call must be"),
    ]:
        with pytest.raises(InvalidOutput, match=message) as caught:
            written_calls(bad)
        assert caught.value.output == bad


def test_a_conversation_in_openais_shape_reaches_the_prompt_format():
    call = FunctionCall("call_9", "get_weather", {"city": "Paris"})
    parts = [{"type": "text", "text": "Weather"}, {"type": "text", "text": "in Paris?"}]
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": parts},
        {"role": "assistant", "content": None, "tool_calls": [call.wire()]},
        {"role": "tool", "tool_call_id": "call_9", "content": "sunny"},
    ]
    assert json.loads(call.wire()["function"]["arguments"]) == {"city": "Paris"}
    template = template_messages(messages)
    assert template[0] == {"role": "system", "content": "Be brief."}
    assert template[1] == {"role": "user", "content": "Weather\nin Paris?"}
    assert template[2]["content"] == ""
    assert template[2]["tool_calls"] == [ToolCall("call_9", "get_weather", '{"city": "Paris"}')]
    assert template[3] == {"role": "tool", "tool_call_id": "call_9", "content": "sunny"}
    prompt = prompt_messages(template, [], "none")
    assert prompt[2] == {
        "role": "assistant",
        "content": '<tool_call>{"name":"get_weather","arguments":{"city":"Paris"}}</tool_call>',
    }
    assert prompt[3] == {
        "role": "user",
        "content": '<tool_response>{"name": "get_weather", "content": "sunny"}</tool_response>',
    }
