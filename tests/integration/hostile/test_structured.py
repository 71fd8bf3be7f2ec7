"""Invalid regexes, grammars and JSON schemas, and huge, deep or recursive ones, in every field
that constrains the output: each a clear 400 naming the field (or a 200 where the constraint
is in fact valid: said below), within the request timeout, the server healthy after."""

from __future__ import annotations

from typing import Any

import pytest
from helpers.hostile import Hostile, dumps, error_of, nested
from helpers.server import TINY_NAME

BAD_REGEXES = {
    "unclosed group": "(ab",
    "unclosed class": "[a-",
    "dangling quantifier": "*a",
    "bad escape": "\\",
    "huge repetition": "a{99999999}",
    "nested repetition": "((a{1000}){1000}){1000}",
    "backreference": "(a)\\1",
    "lone surrogate": "a\ud800",
    "huge": "(" + "|".join(f"w{i}" for i in range(200_000)) + ")",
}

BAD_SCHEMAS: dict[str, Any] = {
    "not a type": {"type": "nonsense"},
    "type is a number": {"type": 5},
    "dangling ref": {"$ref": "#/$defs/missing"},
    "remote ref": {"$ref": "https://example.com/schema.json"},
    "self ref": {"$ref": "#"},
    "ref cycle": {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}},
                  "$ref": "#/$defs/a"},
    "negative length": {"type": "string", "minLength": -1},
    "min above max": {"type": "string", "minLength": 5, "maxLength": 2},
    "bad pattern": {"type": "string", "pattern": "(ab"},
    "not an object": [1, 2],
    "NaN bound": {"type": "number", "maximum": float("nan")},
    "deep": nested(400) | {"type": "object"},
    "deep properties": None,  # filled below
    "huge enum": {"enum": [f"v{i}" for i in range(100_000)]},
    "many properties": {"type": "object", "required": [f"p{i}" for i in range(20_000)],
                        "properties": {f"p{i}": {"type": "integer"} for i in range(20_000)}},
}  # fmt: skip


def _deep_properties(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


BAD_SCHEMAS["deep properties"] = _deep_properties(300)

# Valid: a recursive schema through properties is a tree, and can be generated.
VALID_SCHEMAS = {
    "tree": {"$defs": {"node": {"type": "object", "properties": {
        "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}}}},
        "$ref": "#/$defs/node"},
}  # fmt: skip

BAD_GRAMMARS = {
    "not lark": "this is not a grammar",
    "undefined rule": "start: missing",
    "left recursion only": "start: start",
    "huge": "start: " + " | ".join(f'"w{i}"' for i in range(100_000)),
    "bad regex": "start: /(ab/",
}

CHAT = {"model": TINY_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
PROMPT = {"model": TINY_NAME, "prompt": "hi", "max_tokens": 2}


def _places(constraint: str, value: Any) -> list[tuple[str, dict[str, Any]]]:
    """(route, body) of every field that takes this kind of constraint."""
    if constraint == "regex":
        return [("/v1/chat/completions", {**CHAT, "guided_regex": value}),
                ("/v1/completions", {**PROMPT, "guided_regex": value})]  # fmt: skip
    if constraint == "grammar":
        return [("/v1/chat/completions", {**CHAT, "guided_grammar": value}),
                ("/v1/completions", {**PROMPT, "guided_grammar": value})]  # fmt: skip
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": value}}
    tool = {"type": "function", "function": {"name": "f", "parameters": value}}
    return [
        ("/v1/chat/completions", {**CHAT, "response_format": fmt}),
        ("/v1/chat/completions", {**CHAT, "guided_json": value}),
        ("/v1/completions", {**PROMPT, "response_format": fmt}),
        ("/v1/completions", {**PROMPT, "guided_json": value}),
        ("/v1/chat/completions", {**CHAT, "tools": [tool], "tool_choice": "required"}),
        ("/llm/chat/", {"user_id": "u-structured", "initial_message": "hi", "max_tokens": 2,
                        "response_format": fmt}),
    ]  # fmt: skip


def _post(hostile: Hostile, route: str, body: dict[str, Any]):
    return hostile.http.post(
        route, content=dumps(body), headers={"content-type": "application/json"}, timeout=30
    )


@pytest.mark.parametrize("name", sorted(BAD_REGEXES))
def test_bad_regexes(hostile: Hostile, name: str) -> None:
    for route, body in _places("regex", BAD_REGEXES[name]):
        error_of(_post(hostile, route, body), f"{route} guided_regex {name}")
    assert hostile.http.get("/health").status_code == 200


@pytest.mark.parametrize("name", sorted(BAD_GRAMMARS))
def test_bad_grammars(hostile: Hostile, name: str) -> None:
    for route, body in _places("grammar", BAD_GRAMMARS[name]):
        error_of(_post(hostile, route, body), f"{route} guided_grammar {name}")
    assert hostile.http.get("/health").status_code == 200


@pytest.mark.parametrize("name", sorted(BAD_SCHEMAS))
def test_bad_json_schemas(hostile: Hostile, name: str) -> None:
    for route, body in _places("schema", BAD_SCHEMAS[name]):
        error_of(_post(hostile, route, body), f"{route} {list(body)[-1]} schema {name}")
    assert hostile.http.get("/health").status_code == 200


def test_a_recursive_tree_schema_is_valid(hostile: Hostile) -> None:
    for route, body in _places("schema", VALID_SCHEMAS["tree"]):
        r = _post(hostile, route, body)
        assert r.status_code == 200, f"{route}: {r.status_code} {r.text[:300]}"


def test_bad_guided_choices(hostile: Hostile) -> None:
    for choices in ([], [""], ["a\ud800"], ["x" * 1_000_000], [f"c{i}" for i in range(100_000)]):
        for route, body in (("/v1/chat/completions", CHAT), ("/v1/completions", PROMPT)):
            r = _post(hostile, route, {**body, "guided_choice": choices})
            if r.is_success and len(choices) == 100_000:
                continue  # many short choices are a valid (if large) constraint
            error_of(r, f"{route} guided_choice of {len(choices)}")
    hostile.server.wait_idle(timeout=30)
    assert hostile.http.get("/health").status_code == 200
