"""Backends and structured answers: the capability flags, `response_format` checks, the
default `function_call` (documented prompt format, parsed) and the local backend's requests
with grammars and tools."""

from __future__ import annotations

import pytest

from glassbox.backends.base import InferenceEngine
from glassbox.backends.llama_cpp import LlamaCppBackend
from glassbox.backends.local import LocalBackend
from glassbox.backends.openai_upstream import OpenAIUpstreamBackend
from glassbox.engine.async_engine import AsyncLLMEngine
from glassbox.errors import InvalidOutput, InvalidRequest, Unsupported
from glassbox.structured.calls import tools_from
from glassbox.structured.tools import system_text

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
    },
}
QUESTION = [{"role": "user", "content": "What is 2 + 3?"}]
SCHEMA = {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "integer"}}}


def test_capability_flags():
    assert (LocalBackend.SUPPORTS_JSON_SCHEMA, LocalBackend.SUPPORTS_TOOLS) == (True, True)
    assert (LlamaCppBackend.SUPPORTS_JSON_SCHEMA, LlamaCppBackend.SUPPORTS_TOOLS) == (True, False)
    upstream = OpenAIUpstreamBackend("http://127.0.0.1:1/v1", "m")
    assert (upstream.SUPPORTS_JSON_SCHEMA, upstream.SUPPORTS_TOOLS) == (True, True)
    plain = OpenAIUpstreamBackend(
        "http://127.0.0.1:1/v1", "m", supports_json_schema=False, supports_tools=False
    )
    assert (plain.SUPPORTS_JSON_SCHEMA, plain.SUPPORTS_TOOLS) == (False, False)
    assert OpenAIUpstreamBackend.SUPPORTS_JSON_SCHEMA  # the class keeps its default


class Scripted(InferenceEngine):
    """Answers from a script; records the messages it was sent."""

    MODULATION_TYPE = "sampling"

    def __init__(self, *answers: str):
        super().__init__()
        self.answers = list(answers)
        self.sent: list[list[dict]] = []

    async def chat_completion_stream(
        self,
        messages,
        max_tokens=None,
        temperature=None,
        top_p=None,
        emotion_coefficients=None,
        *,
        response_format=None,
    ):
        self.json_format(response_format)
        self.sent.append(messages)
        yield self.answers.pop(0)


async def test_response_format_is_checked_and_refused_without_support():
    backend = Scripted("plain", "plain")
    assert await backend.chat_completion(QUESTION, response_format={"type": "text"}) == "plain"
    assert backend.json_format(None) is None
    with pytest.raises(Unsupported, match="Scripted cannot constrain its output") as caught:
        await backend.chat_completion(QUESTION, response_format=SCHEMA)
    assert caught.value.param == "response_format"
    for bad, message in [
        ({"type": "xml"}, "must be 'text', 'json_object' or 'json_schema'"),
        ({"type": "json_schema"}, "needs 'json_schema'"),
    ]:
        with pytest.raises(InvalidRequest, match=message):
            backend.json_format(bad)
    backend.SUPPORTS_JSON_SCHEMA = True
    assert backend.json_format(SCHEMA) == SCHEMA
    assert backend.json_format({"type": "json_object"}) == {"type": "json_object"}


async def test_default_function_call_offers_tools_in_the_prompt_and_parses_the_reply():
    reply = 'Let me add.\n<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'
    wrong = '<tool_call>{"name":"add","arguments":{"a":"2","b":3}}</tool_call>'
    backend = Scripted(reply, "It is 5.", wrong)
    calls = await backend.function_call(QUESTION, [ADD], "required")
    assert len(calls) == 1 and calls[0].id.startswith("call_")
    assert (calls[0].name, calls[0].arguments) == ("add", {"a": 2, "b": 3})
    system, user = backend.sent[0]
    assert user == QUESTION[0]
    assert system == {"role": "system", "content": system_text(tools_from([ADD]), "required")}
    # The conversation goes on in OpenAI's shape: the call, then its result.
    follow = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [calls[0].wire()]},
        {"role": "tool", "tool_call_id": calls[0].id, "content": "5"},
    ]
    assert await backend.function_call(follow, [ADD]) == []  # "auto": it answered in text
    compact = '<tool_call>{"name":"add","arguments":{"a":2,"b":3}}</tool_call>'
    assert backend.sent[1][2] == {"role": "assistant", "content": compact}
    assert backend.sent[1][3]["content"] == (
        '<tool_response>{"name": "add", "content": "5"}</tool_response>'
    )
    with pytest.raises(InvalidOutput, match="'add' at a: '2' is not of type 'integer'") as caught:
        await backend.function_call(QUESTION, [ADD], "add")
    assert caught.value.output == wrong
    assert "You must call the function 'add'." in backend.sent[2][0]["content"]


# --- the local backend --------------------------------------------------------------------


@pytest.fixture
def local(make_engine):
    engine = AsyncLLMEngine(lambda: make_engine(max_model_len=2048))
    yield LocalBackend(engine)
    engine.shutdown()


async def test_local_response_format_becomes_the_requests_grammar(local):
    grammar = await local.format_grammar(SCHEMA)
    assert grammar is local.grammars.json_schema({"type": "integer"})  # compiled once, cached
    assert await local.format_grammar({"type": "text"}) is None
    obj = await local.format_grammar({"type": "json_object"})
    assert obj is local.grammars.json_object()
    params = local.request(QUESTION, 8, None, None, None, grammar=grammar).params
    assert params.grammar is grammar
    bad = {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "integr"}}}
    with pytest.raises(InvalidRequest, match="invalid JSON schema") as caught:
        await local.format_grammar(bad)
    assert caught.value.param == "response_format"


async def test_local_tools_reach_the_prompt(local):
    tools = tools_from([ADD])
    request = local.request(QUESTION, 40, None, None, None, tools=tools, tool_choice="add")
    prompt = local.requests.tokenizer.decode(request.prompt_ids)
    assert system_text(tools, "add") in prompt and QUESTION[0]["content"] in prompt
    assert request.params.grammar is None  # function_call compiles and passes it
    plain = local.request(QUESTION, 40, None, None, None)
    assert plain.prompt_ids == local.requests.chat(QUESTION)
