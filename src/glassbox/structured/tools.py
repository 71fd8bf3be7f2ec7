"""Tool calls: the prompt that offers tools, the grammar that constrains the calls, and the
parsing of generated calls (whole, or as they stream).

The wire format of a call is the one Hermes, Qwen 2.5 and SmolLM3 use, compact JSON in tags:

    <tool_call>{"name":"get_weather","arguments":{"city":"Paris"}}</tool_call>

several calls (`parallel_tool_calls`) one per line. The grammar (llguidance Lark) allows:

    tool_choice "auto":      start: TEXT | calls        TEXT: any text not starting with "<"
    tool_choice "required":  start: calls
    a named function:        start: calls of that function only
    parallel_tool_calls false: one call instead of `calls`

and each call's `arguments` are constrained to that tool's parameter schema (`%json`). The
schema sits at `/properties/arguments` of the call's schema, so its own `$ref`s ("#",
"#/$defs/node") are rebased there (`rebase_refs`): a recursive schema keeps working. Each
tool's schema is also compiled on its own (`check_tools` with the compiler), so a schema that
cannot be enforced, or that no value satisfies, is a 400 naming `tools[i].function.parameters`
whatever `tool_choice` says.

Prompt format: a model whose chat template takes `tools` gets them through its template;
for any other model (the bundled SmolLM2 among them) glassbox documents and uses this one:

- the tools and the instructions above go into a system message (the first system message
  of the conversation is extended, or one is put first);
- an assistant message with `tool_calls` becomes an assistant message whose content is its
  text followed by the calls in the wire format;
- a `tool` message becomes a user message `<tool_response>{"name":..,"content":..}
  </tool_response>` (the name found by its `tool_call_id`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from glassbox.errors import InvalidRequest
from glassbox.structured.grammar import (
    JSON_OPTIONS,
    CompiledGrammar,
    GrammarCompiler,
    check_schema,
    closed_schema,
)

OPEN, CLOSE = "<tool_call>", "</tool_call>"
ToolChoice = Literal["none", "auto", "required"] | str  # a str other than those: a name


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    # OpenAI's strict mode, passed on to upstreams; glassbox's own grammar closes every object
    # of the parameters either way (see grammar.py).
    strict: bool = False

    def spec(self) -> dict[str, Any]:
        """OpenAI's shape (what chat templates with tool support take)."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def check_tools(tools: list[Tool], compiler: GrammarCompiler | None = None) -> None:
    """Unique names and valid parameter schemas; with a compiler, schemas that llguidance can
    enforce and that some value satisfies (each compiled on its own, and cached)."""
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise InvalidRequest("tool names must be unique", param="tools")
    for i, tool in enumerate(tools):
        param = f"tools[{i}].function.parameters"
        if compiler is None:
            check_schema(tool.parameters, param)
        else:
            compiler.json_schema(tool.parameters, param=param)


def compile_grammar(
    compiler: GrammarCompiler, tools: list[Tool], choice: ToolChoice, parallel: bool
) -> CompiledGrammar:
    """The compiled grammar of an answer under `choice`, each tool's schema checked first."""
    check_tools(tools, compiler)
    return compiler.lark(grammar(tools, choice, parallel), "tools", max_chars=None)


def choose(tools: list[Tool], choice: ToolChoice) -> list[Tool]:
    """The tools a call may use under `choice` (all, or the named one)."""
    if choice in ("none", "auto", "required"):
        return tools
    named = [t for t in tools if t.name == choice]
    if not named:
        raise InvalidRequest(
            f"tool_choice names '{choice}', which is not in 'tools'", param="tool_choice"
        )
    return named


def grammar(tools: list[Tool], choice: ToolChoice, parallel: bool) -> str:
    """The Lark grammar (llguidance's dialect) of an answer under `choice`."""
    if choice == "none":
        raise ValueError("tool_choice 'none' has no grammar")
    rules = []
    names = []
    for i, tool in enumerate(choose(tools, choice)):
        params = closed_schema(tool.parameters or {"type": "object", "properties": {}})
        call = {
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": rebase_refs(params)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
            "x-guidance": dict(JSON_OPTIONS),
        }
        rules.append(f'call_{i}: "{OPEN}" %json {json.dumps(call)} "{CLOSE}"')
        names.append(f"call_{i}")
    lines = [f"call: {' | '.join(names)}"]
    lines.append('calls: call ("\\n" call)*' if parallel else "calls: call")
    if choice == "auto":
        lines.append("start: TEXT | calls")
        lines.append("TEXT: /[^<][\\s\\S]*/")
    else:
        lines.append("start: calls")
    return "\n".join(lines + rules) + "\n"


ARGUMENTS = "#/properties/arguments"  # where a tool's schema sits in its call's schema
_DATA = frozenset({"const", "enum", "default", "examples"})  # keywords whose values are data
# keywords whose values map names (which may be any word, "enum" too) to schemas
_NAMED = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})


def rebase_refs(schema: Any, base: str = ARGUMENTS) -> Any:
    """The schema with each `$ref` by JSON pointer into itself ("#", "#/...") pointing into
    `base` instead, for the schema embedded at `base` of another; data stays as it is."""
    if isinstance(schema, list):
        return [rebase_refs(s, base) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "$ref" and isinstance(value, str) and (value == "#" or value[:2] == "#/"):
            out[key] = base + value[1:]
        elif key in _DATA:
            out[key] = value
        elif key in _NAMED and isinstance(value, dict):
            out[key] = {name: rebase_refs(v, base) for name, v in value.items()}
        else:
            out[key] = rebase_refs(value, base)
    return out


def system_text(tools: list[Tool], choice: ToolChoice) -> str:
    """The system prompt that offers the tools (the documented format)."""
    specs = "\n".join(
        json.dumps(
            {k: v for k, v in t.spec()["function"].items() if v},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        for t in tools
    )
    rule = {
        "auto": "If a function helps, call it; otherwise answer in plain text.",
        "required": "You must call one or more of these functions.",
    }.get(choice, f"You must call the function '{choice}'.")
    return (
        f"You can call these functions:\n<tools>\n{specs}\n</tools>\n{rule} "
        f'Write each call on a line of its own: {OPEN}{{"name": <name>, "arguments": '
        f"<arguments as JSON>}}{CLOSE}. Results come back in <tool_response> tags."
    )


def render(calls: list[ToolCall], content: str = "") -> str:
    """An assistant turn with calls, in the wire format."""
    lines = [content] if content else []
    for call in calls:
        body = {"name": call.name, "arguments": _arguments(call.arguments)}
        lines.append(OPEN + json.dumps(body, ensure_ascii=False, separators=(",", ":")) + CLOSE)
    return "\n".join(lines)


def prompt_messages(
    messages: list[dict[str, Any]], tools: list[Tool], choice: ToolChoice
) -> list[dict[str, Any]]:
    """The conversation in the documented format, for a template without tool support.

    `messages` are template messages whose assistant turns may carry `tool_calls` (a list
    of ToolCall) and whose tool turns carry `tool_call_id`."""
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            for call in m["tool_calls"]:
                names[call.id] = call.name
            out.append({"role": "assistant", "content": render(m["tool_calls"], m["content"])})
        elif m["role"] == "tool":
            body = {"name": names.get(m.get("tool_call_id") or "", ""), "content": m["content"]}
            text = json.dumps(body, ensure_ascii=False)
            out.append({"role": "user", "content": f"<tool_response>{text}</tool_response>"})
        else:
            out.append({k: v for k, v in m.items() if k in ("role", "content", "name")})
    if tools and choice != "none":
        offer = system_text(tools, choice)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{offer}"}
        else:
            out.insert(0, {"role": "system", "content": offer})
    return out


def conversation(
    messages: list[dict[str, Any]], tools: list[Tool], choice: ToolChoice, template_tools: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(messages, tools for the template): through the chat template's own tool support
    when it has one (`template_tools`), else in the documented format (`prompt_messages`)."""
    if not template_tools:
        return prompt_messages(messages, tools, choice), None
    out = []
    for m in messages:
        if m.get("tool_calls"):
            calls = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": _arguments(c.arguments)},
                }
                for c in m["tool_calls"]
            ]
            m = {**m, "tool_calls": calls}
        out.append(m)
    offered = [t.spec() for t in tools] if tools and choice != "none" else None
    return out, offered


def _arguments(text: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"a tool call's arguments are not JSON: {exc}", param="messages"
        ) from exc


def parse(text: str) -> tuple[str, list[ToolCall]]:
    """(content, calls) of a generated answer; text that is not a complete call stays
    content."""
    stream = CallStream()
    events = list(stream.feed(text)) + list(stream.end())
    content = "".join(e.text for e in events if e.kind == "content")
    calls: dict[int, dict[str, str]] = {}
    for e in events:
        if e.kind == "name":
            calls[e.index] = {"id": e.call_id, "name": e.text, "arguments": ""}
        elif e.kind == "arguments":
            calls[e.index]["arguments"] += e.text
    return content, [ToolCall(c["id"], c["name"], c["arguments"]) for c in calls.values()]


@dataclass(frozen=True)
class CallEvent:
    kind: Literal["content", "name", "arguments"]
    text: str
    index: int = 0
    call_id: str = ""


_HEAD = '{"name":"'
_ARGS = '","arguments":'
_TAIL = "}" + CLOSE


class CallStream:
    """Turns generated text, piece by piece, into content and tool-call events as OpenAI
    streams them: a call's name (with its id) first, then its arguments in pieces.

    A call in the wire format is `<tool_call>{"name":"N","arguments":ARGS}</tool_call>`
    (compact: the grammar allows no other spacing); ARGS is streamed as it arrives, less
    the last len('}</tool_call>') characters, which may be the call's end."""

    def __init__(self) -> None:
        self.buffer = ""
        self.state: Literal["start", "content", "between", "head", "name", "args"] = "start"
        self.calls = 0

    def feed(self, piece: str) -> Iterator[CallEvent]:
        self.buffer += piece
        while True:
            event, progressed = self._step()
            if event is not None:
                yield event
            if not progressed:
                return

    def end(self) -> Iterator[CallEvent]:
        """What is left when generation ends: an unfinished call's text is content."""
        if self.state in ("start", "content", "between", "head") and self.buffer.strip():
            yield CallEvent("content", self.buffer)
        elif self.state == "name":
            yield CallEvent("content", OPEN + _HEAD + self.buffer)
        elif self.state == "args" and self.buffer:
            # a call cut short (max_tokens): its arguments so far, less the start of the end
            rest = self.buffer
            for cut in range(min(len(rest), len(_TAIL)), 0, -1):
                if _TAIL.startswith(rest[-cut:]):
                    rest = rest[:-cut]
                    break
            if rest:
                yield CallEvent("arguments", rest, self.calls - 1)
        self.buffer = ""

    def _step(self) -> tuple[CallEvent | None, bool]:
        b = self.buffer
        if self.state == "start":
            if not b:
                return None, False
            if OPEN.startswith(b[: len(OPEN)]) and len(b) < len(OPEN):
                return None, False  # may still become a call
            self.state = "head" if b.startswith(OPEN) else "content"
            return None, True
        if self.state == "content":
            self.buffer = ""
            return (CallEvent("content", b) if b else None), False
        if self.state == "between":
            stripped = b.lstrip("\n")
            if len(stripped) < len(OPEN):
                return None, False
            self.buffer = stripped
            self.state = "head" if stripped.startswith(OPEN) else "content"
            return None, True
        if self.state == "head":
            if len(b) < len(OPEN) + len(_HEAD):
                return None, False
            if not b.startswith(OPEN + _HEAD):
                self.state = "content"
                return None, True
            self.buffer = b[len(OPEN) + len(_HEAD) :]
            self.state = "name"
            return None, True
        if self.state == "name":
            end = b.find(_ARGS)
            if end < 0:
                return None, False
            self.buffer = b[end + len(_ARGS) :]
            self.state = "args"
            self.calls += 1
            return CallEvent("name", b[:end], self.calls - 1, new_call_id()), True
        # args
        end = b.find(_TAIL)
        if end >= 0:
            self.buffer = b[end + len(_TAIL) :]
            self.state = "between"
            return (CallEvent("arguments", b[:end], self.calls - 1) if end else None), True
        keep = len(_TAIL)
        if len(b) <= keep:
            return None, False
        self.buffer = b[-keep:]
        return CallEvent("arguments", b[:-keep], self.calls - 1), False
