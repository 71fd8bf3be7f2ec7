"""Tool calls as data: what `InferenceEngine.function_call` takes (OpenAI's `tools`,
`tool_choice` and messages) and returns (`FunctionCall`s whose arguments are a dict that
validates against the tool's parameter schema).

A call whose arguments do not validate, a call of a tool that was not offered, or no call
where `tool_choice` required one, is an `InvalidOutput`: the caller never gets arguments it
would have to check again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match

from glassbox.errors import InvalidOutput, InvalidRequest
from glassbox.structured.grammar import closed_schema
from glassbox.structured.tools import (
    CLOSE,
    OPEN,
    Tool,
    ToolCall,
    ToolChoice,
    check_tools,
    choose,
    new_call_id,
)

_ROLES = {"developer": "system"}  # chat templates know 'system', not 'developer'
_CALL = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.DOTALL)


@dataclass(frozen=True)
class FunctionCall:
    id: str
    name: str
    arguments: dict[str, Any]

    def wire(self) -> dict[str, Any]:
        """The call as an assistant message's `tool_calls` carry it (OpenAI's shape), to send
        the conversation on with the tool's result."""
        arguments = json.dumps(self.arguments, ensure_ascii=False)
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": arguments},
        }


def tools_from(tools: Sequence[Tool | Mapping[str, Any]]) -> list[Tool]:
    """`Tool`s from OpenAI's tool specs (`{"type": "function", "function": {...}}`) or
    `Tool`s, checked (unique names, valid parameter schemas)."""
    if not tools:
        raise InvalidRequest("give at least one tool", param="tools")
    out = []
    for i, spec in enumerate(tools):
        if isinstance(spec, Tool):
            out.append(spec)
            continue
        function = spec.get("function") if isinstance(spec, Mapping) else None
        if not isinstance(function, Mapping) or spec.get("type") != "function":
            raise InvalidRequest(
                f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}", param="tools"
            )
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"tools[{i}].function needs a 'name'", param="tools")
        out.append(
            Tool(
                name,
                function.get("description") or "",
                dict(function.get("parameters") or {"type": "object", "properties": {}}),
                bool(function.get("strict")),
            )
        )
    check_tools(out)
    return out


def choice_name(tool_choice: str | Mapping[str, Any], tools: list[Tool]) -> ToolChoice:
    """'auto', 'required' or the name of the one tool to call, from OpenAI's `tool_choice`
    (a string, or `{"type": "function", "function": {"name": ...}}`)."""
    if isinstance(tool_choice, Mapping):
        name = (tool_choice.get("function") or {}).get("name")
        if not isinstance(name, str):
            raise InvalidRequest("a named tool_choice needs function.name", param="tool_choice")
        tool_choice = name
    if tool_choice == "none":
        raise InvalidRequest(
            "function_call asks for calls: tool_choice must be 'auto', 'required' or a "
            "tool's name, not 'none'",
            param="tool_choice",
        )
    choose(tools, tool_choice)  # a name must be one of the tools
    return tool_choice


def wire_tool(tool: Tool) -> dict[str, Any]:
    """OpenAI's spec of a tool, with its `strict` flag."""
    spec = tool.spec()
    if tool.strict:
        spec["function"]["strict"] = True
    return spec


def wire_choice(choice: ToolChoice) -> str | dict[str, Any]:
    if choice in ("auto", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


def template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI's messages as the request path takes them (`tools.prompt_messages`): text
    content, 'developer' as 'system', an assistant turn's `tool_calls` as `ToolCall`s."""
    out = []
    for m in messages:
        message = {k: v for k, v in m.items() if k in ("role", "name", "tool_call_id")}
        message["role"] = _ROLES.get(m["role"], m["role"])
        message["content"] = _text(m.get("content"))
        if m.get("tool_calls"):
            message["tool_calls"] = [_tool_call(c) for c in m["tool_calls"]]
        out.append(message)
    return out


def written_calls(text: str) -> list[ToolCall]:
    """The calls in the answer of an unconstrained model: every `<tool_call>...</tool_call>`
    in it, with the JSON inside spaced as the model likes and words around them ignored."""
    calls = []
    for body in _CALL.findall(text):
        try:
            call = json.loads(body)
        except json.JSONDecodeError as exc:
            raise _invalid(f"a call is not JSON: {exc}", text) from exc
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise _invalid('a call must be {"name": ..., "arguments": {...}}', text)
        arguments = call.get("arguments", {})
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        calls.append(ToolCall(new_call_id(), call["name"], arguments))
    return calls


def validated(
    calls: list[ToolCall], tools: list[Tool], choice: ToolChoice, parallel: bool, answer: str
) -> list[FunctionCall]:
    """The calls with their arguments parsed and validated against their tools' parameter
    schemas (made strict for a strict tool); `answer` is what the model said, for the
    error."""
    offered = {t.name: t for t in choose(tools, choice)}

    def invalid(reason: str) -> InvalidOutput:
        return _invalid(reason, answer)

    if not calls and choice != "auto":
        raise invalid(f"tool_choice '{choice}' asks for a call and the model made none")
    if len(calls) > 1 and not parallel:
        raise invalid(f"{len(calls)} calls, and parallel_tool_calls is false")
    out = []
    for call in calls:
        tool = offered.get(call.name)
        if tool is None:
            raise invalid(f"'{call.name}' is not a tool offered ({', '.join(offered)})")
        try:
            arguments = json.loads(call.arguments) if call.arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise invalid(f"the arguments of '{call.name}' are not JSON: {exc}") from exc
        if not isinstance(arguments, dict):
            raise invalid(f"the arguments of '{call.name}' are not a JSON object")
        schema = closed_schema(tool.parameters) if tool.strict else tool.parameters
        error = best_match(
            jsonschema.validators.validator_for(schema)(schema).iter_errors(arguments)
        )
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(the arguments)"
            raise invalid(f"the arguments of '{call.name}' at {where}: {error.message}")
        out.append(FunctionCall(call.id, call.name, arguments))
    return out


def _invalid(reason: str, answer: str) -> InvalidOutput:
    return InvalidOutput(f"the model's tool calls are not valid: {reason}", output=answer)


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(part.get("text") or "" for part in content if isinstance(part, Mapping))


def _tool_call(call: Mapping[str, Any]) -> ToolCall:
    function = call["function"]
    arguments = function.get("arguments") or "{}"
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return ToolCall(call["id"], function["name"], arguments)
