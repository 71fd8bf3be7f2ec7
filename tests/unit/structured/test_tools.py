"""Tool calls: the grammar, the documented prompt format, and parsing whole or streamed."""

from __future__ import annotations

import json

import pytest

from glassbox.errors import InvalidRequest
from glassbox.structured import tools
from glassbox.structured.grammar import GrammarCompiler
from glassbox.structured.tools import CallStream, Tool, ToolCall

WEATHER = Tool(
    "get_weather",
    "The weather in a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TIME = Tool("get_time", "The time", {"type": "object", "properties": {}}, strict=True)
CALL = '<tool_call>{"name":"get_weather","arguments":{"city":"Paris"}}</tool_call>'
CALL2 = '<tool_call>{"name":"get_time","arguments":{}}</tool_call>'


@pytest.fixture(scope="module")
def grammars(tiny_tokenizer, tiny_model) -> GrammarCompiler:
    return GrammarCompiler(tiny_tokenizer, tiny_model.config.vocab_size)


def accepts(grammars, source: str, text: str) -> bool:
    matcher = grammars.lark(source).matcher()
    ids = grammars.tokenizer.encode(text, add_special_tokens=False)
    return all(matcher.consume(t) for t in ids) and matcher.is_accepting()


@pytest.mark.parametrize(
    ("choice", "parallel", "text", "ok"),
    [
        ("required", True, CALL, True),
        ("required", True, CALL + "\n" + CALL2, True),
        ("required", False, CALL + "\n" + CALL2, False),
        ("required", True, "Sunny", False),
        ("auto", True, "It is sunny.", True),
        ("auto", True, CALL, True),
        ("get_time", True, CALL, False),
        ("get_time", True, CALL2, True),
        ("required", True, CALL.replace('"city":"Paris"', '"town":"Paris"'), False),
        ("required", True, CALL.replace("get_weather", "get_wether"), False),
        ("required", True, CALL2.replace("{}", '{"x":1}'), False),  # closed: no extra keys
    ],
)
def test_the_grammar_allows_what_tool_choice_allows(grammars, choice, parallel, text, ok) -> None:
    source = tools.grammar([WEATHER, TIME], choice, parallel)
    assert accepts(grammars, source, text) is ok


def test_a_named_choice_must_be_a_tool() -> None:
    with pytest.raises(InvalidRequest) as exc:
        tools.choose([WEATHER], "get_time")
    assert exc.value.param == "tool_choice"


def test_duplicate_tool_names_and_bad_schemas_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="unique"):
        tools.check_tools([WEATHER, WEATHER])
    bad = Tool("f", "", {"type": "object", "properties": {"a": {"type": "strin"}}})
    with pytest.raises(InvalidRequest) as exc:
        tools.check_tools([WEATHER, bad])
    assert "tools[1].function.parameters" in str(exc.value)
    assert "'/properties/a/type'" in str(exc.value)


def test_parse_splits_content_and_calls() -> None:
    content, calls = tools.parse(CALL + "\n" + CALL2)
    assert content == ""
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {}),
    ]
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") for c in calls)
    assert tools.parse("Just text.") == ("Just text.", [])


def test_an_unfinished_call_stays_content() -> None:
    cut = CALL[:30]
    content, calls = tools.parse(cut)
    assert calls == [] and content == cut


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_the_stream_gives_the_name_first_then_arguments_in_pieces(size) -> None:
    text = CALL + "\n" + CALL2
    stream = CallStream()
    events = []
    for i in range(0, len(text), size):
        events += list(stream.feed(text[i : i + size]))
    events += list(stream.end())
    kinds = [e.kind for e in events]
    assert kinds[0] == "name" and events[0].text == "get_weather"
    assert "content" not in kinds
    second = kinds.index("name", 1)
    first_args = "".join(e.text for e in events[1:second])
    assert json.loads(first_args) == {"city": "Paris"}
    assert events[second].text == "get_time" and events[second].index == 1
    assert "".join(e.text for e in events[second + 1 :]) == "{}"
    if size == 1:  # arguments arrive in several pieces as they are generated
        assert kinds.count("arguments") > 2


def test_the_stream_passes_plain_text_through() -> None:
    stream = CallStream()
    pieces = [e.text for p in ["Hel", "lo <b>", " there"] for e in stream.feed(p)]
    pieces += [e.text for e in stream.end()]
    assert "".join(pieces) == "Hello <b> there"


def test_the_documented_prompt_format() -> None:
    call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "Sunny", "tool_call_id": "call_1"},
    ]
    out = tools.prompt_messages(messages, [WEATHER], "auto")
    assert out[0]["role"] == "system" and out[0]["content"].startswith("Be brief.\n\n")
    assert '{"name":"get_weather"' in out[0]["content"] and "<tools>" in out[0]["content"]
    assert out[2] == {"role": "assistant", "content": CALL}
    assert out[3]["role"] == "user"
    response = out[3]["content"]
    assert response.startswith("<tool_response>") and response.endswith("</tool_response>")
    assert json.loads(response[len("<tool_response>") : -len("</tool_response>")]) == {
        "name": "get_weather",
        "content": "Sunny",
    }
    plain = tools.prompt_messages(messages[1:2], [WEATHER], "none")
    assert plain == [{"role": "user", "content": "Weather in Paris?"}]


def test_a_template_with_tool_support_gets_openai_shapes() -> None:
    call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
    messages = [{"role": "assistant", "content": "", "tool_calls": [call]}]
    out, offered = tools.conversation(messages, [WEATHER], "auto", template_tools=True)
    assert out[0]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": {"city": "Paris"},
    }
    assert offered == [WEATHER.spec()]


def test_arguments_that_are_not_json_are_a_400() -> None:
    bad = ToolCall("call_1", "get_weather", "{city: Paris")
    with pytest.raises(InvalidRequest) as exc:
        tools.prompt_messages(
            [{"role": "assistant", "content": "", "tool_calls": [bad]}], [], "none"
        )
    assert exc.value.param == "messages"


def test_a_call_cut_short_keeps_its_arguments_so_far() -> None:
    stream = CallStream()
    text = '<tool_call>{"name":"get_time","arguments":{}}</tool_c'
    events = list(stream.feed(text)) + list(stream.end())
    assert [(e.kind, e.text) for e in events] == [("name", "get_time"), ("arguments", "{}")]


TREE = {"$defs": {"node": {"type": "object", "properties": {
    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}}}},
    "$ref": "#/$defs/node"}  # fmt: skip


@pytest.mark.parametrize("choice", ["required", "auto", "tree"])
def test_a_recursive_tool_schema_constrains_its_calls(grammars, choice) -> None:
    # the schema is embedded at /properties/arguments of the call's: its refs follow it there
    tree = Tool("tree", "A tree", TREE)
    grammar = tools.compile_grammar(grammars, [tree, WEATHER], choice, True)
    call = '<tool_call>{"name":"tree","arguments":{"children":[{},{"children":[{}]}]}}</tool_call>'
    bad = call.replace('"children":[{}]', '"kids":[{}]')
    for text, ok in ((call, True), (bad, False)):
        matcher = grammar.matcher()
        ids = grammars.tokenizer.encode(text, add_special_tokens=False)
        assert (all(matcher.consume(t) for t in ids) and matcher.is_accepting()) is ok, text


def test_refs_are_rebased_but_data_is_not() -> None:
    schema = {
        "$ref": "#/$defs/a",
        "$defs": {"a": {"items": {"$ref": "#"}}, "enum": {"$ref": "#/$defs/a"}},
        "properties": {"const": {"$ref": "#/$defs/a"}, "$ref": {"type": "string"}},
        "const": {"$ref": "#/x"},
        "enum": [{"$ref": "#"}],
        "anyOf": [{"$ref": "https://example.com/s.json"}, {"$ref": "#anchor"}],
    }
    assert tools.rebase_refs(schema, "#/p") == {
        "$ref": "#/p/$defs/a",
        "$defs": {"a": {"items": {"$ref": "#/p"}}, "enum": {"$ref": "#/p/$defs/a"}},
        "properties": {"const": {"$ref": "#/p/$defs/a"}, "$ref": {"type": "string"}},
        "const": {"$ref": "#/x"},
        "enum": [{"$ref": "#"}],
        "anyOf": [{"$ref": "https://example.com/s.json"}, {"$ref": "#anchor"}],
    }


@pytest.mark.parametrize("choice", ["required", "auto", "get_weather"])
def test_a_tool_schema_that_admits_no_value_is_refused_naming_it(grammars, choice) -> None:
    # with "auto" the combined grammar would still allow text: each schema is compiled alone
    cyclic = Tool("loop", "", {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"})
    with pytest.raises(InvalidRequest) as exc:
        tools.compile_grammar(grammars, [WEATHER, cyclic], choice, True)
    assert exc.value.param == "tools[1].function.parameters"
    assert "$ref cycle" in str(exc.value)
