"""Compiling grammars with llguidance: the cache, and errors that name the schema path."""

from __future__ import annotations

import pytest

from glassbox.errors import InvalidRequest
from glassbox.structured.grammar import GrammarCompiler, closed_schema, locate


@pytest.fixture(scope="module")
def grammars(tiny_tokenizer, tiny_model) -> GrammarCompiler:
    return GrammarCompiler(tiny_tokenizer, tiny_model.config.vocab_size)


def accepts(grammar, tokenizer, text: str) -> bool:
    matcher = grammar.matcher()
    ok = all(matcher.consume(t) for t in tokenizer.encode(text, add_special_tokens=False))
    return ok and matcher.is_accepting()


def test_compiled_grammars_are_cached_by_schema(grammars) -> None:
    before = grammars.compiled
    a = grammars.json_schema({"type": "object", "properties": {"a": {"type": "integer"}}})
    b = grammars.json_schema({"properties": {"a": {"type": "integer"}}, "type": "object"})
    assert a is b and grammars.compiled == before + 1


def test_the_cache_is_bounded(tiny_tokenizer, tiny_model) -> None:
    small = GrammarCompiler(tiny_tokenizer, tiny_model.config.vocab_size, cache_size=2)
    first = small.regex("a+")
    small.regex("b+")
    small.regex("c+")
    assert small.regex("a+") is not first  # evicted, compiled again
    assert small.compiled == 4


@pytest.mark.parametrize(
    ("schema", "path"),
    [
        ({"type": "object", "properties": {"x": {"type": "strin"}}}, "/properties/x/type"),
        ({"type": "object", "properties": {"x": {"required": "a"}}}, "/properties/x/required"),
        ({"type": "object", "properties": {"x": {"not": {"type": "string"}}}}, "/properties/x/not"),
        ({"properties": {"a": {"$ref": "#/$defs/missing"}}}, "/properties/a/$ref"),
        ({"type": "string", "format": "ipv5"}, "/format"),
        ({"type": "string", "pattern": "(("}, "/pattern"),
    ],
)
def test_a_bad_schema_is_refused_with_its_path(grammars, schema, path) -> None:
    with pytest.raises(InvalidRequest) as exc:
        grammars.json_schema(schema)
    assert f"'{path}'" in str(exc.value)
    assert exc.value.param == "response_format"


def test_a_property_named_like_a_keyword_is_not_blamed() -> None:
    schema = {"properties": {"not": {"type": "string"}, "b": {"not": {}}}}
    assert locate(schema, 'Unimplemented keys: ["not"]') == "/properties/b/not"


def test_every_object_is_closed_unless_it_says_otherwise() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {}},
            "b": {"type": "string"},
            "c": {"type": "object"},
        },
        "$defs": {"d": {"properties": {"x": {}}, "additionalProperties": True}},
        "allOf": [{"properties": {"y": {}}}],
    }
    out = closed_schema(schema)
    assert out["additionalProperties"] is False
    assert out["properties"]["a"]["additionalProperties"] is False
    assert "additionalProperties" not in out["properties"]["b"]
    assert "additionalProperties" not in out["properties"]["c"]  # any object
    assert out["$defs"]["d"]["additionalProperties"] is True
    assert "additionalProperties" not in out["allOf"][0]


def test_extra_keys_only_where_the_schema_allows_them(grammars, tiny_tokenizer) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    extra = '{"a":1,"b":2}'
    assert not accepts(grammars.json_schema(schema), tiny_tokenizer, extra)
    assert accepts(grammars.json_schema(schema), tiny_tokenizer, '{"a":1}')
    open_ = {**schema, "additionalProperties": True}
    assert accepts(grammars.json_schema(open_), tiny_tokenizer, extra)


def test_json_object_is_any_object(grammars, tiny_tokenizer) -> None:
    grammar = grammars.json_object()
    assert accepts(grammar, tiny_tokenizer, '{"a":1,"b":{"c":[true,null]}}')
    assert accepts(grammar, tiny_tokenizer, "{}")
    assert not accepts(grammar, tiny_tokenizer, "[1]")


def test_schema_features_of_openai_strict_mode_compile_and_hold(grammars, tiny_tokenizer) -> None:
    schema = {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/$defs/item"}},
            "kind": {"anyOf": [{"type": "string", "enum": ["a", "b"]}, {"type": "null"}]},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "when": {"type": "string", "format": "date"},
        },
        "required": ["items", "kind", "score", "when"],
        "$defs": {
            "item": {
                "type": "object",
                "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 3}},
                "required": ["n"],
            }
        },
    }
    grammar = grammars.json_schema(schema)
    ok = '{"items":[{"n":2}],"kind":null,"score":0.5,"when":"2026-11-30"}'
    assert accepts(grammar, tiny_tokenizer, ok)
    for bad in (
        '{"items":[{"n":4}],"kind":null,"score":0.5,"when":"2026-11-30"}',
        '{"items":[],"kind":"c","score":0.5,"when":"2026-11-30"}',
        '{"items":[],"kind":"a","score":1.5,"when":"2026-11-30"}',
        '{"items":[],"kind":"a","score":0.5,"when":"yesterday"}',
    ):
        assert not accepts(grammar, tiny_tokenizer, bad), bad


def test_regex_choice_and_lark(grammars, tiny_tokenizer) -> None:
    assert accepts(grammars.regex(r"\d{3}-\d{2}"), tiny_tokenizer, "123-45")
    assert not accepts(grammars.regex(r"\d{3}-\d{2}"), tiny_tokenizer, "12-345")
    choice = grammars.choice(["red", "dark red"])
    assert accepts(choice, tiny_tokenizer, "dark red")
    assert not accepts(choice, tiny_tokenizer, "blue")
    lark = grammars.lark('start: "a" b\nb: "x" | "y"')
    assert accepts(lark, tiny_tokenizer, "ay")


@pytest.mark.parametrize(
    ("make", "param"),
    [
        (lambda g: g.regex("[a-"), "guided_regex"),
        (lambda g: g.lark("start: foo"), "guided_grammar"),
        (lambda g: g.choice([]), "guided_choice"),
        (lambda g: g.choice(["a", ""]), "guided_choice"),
        (lambda g: g.json_schema([1, 2]), "response_format"),
    ],
)
def test_bad_constraints_are_refused_naming_the_field(grammars, make, param) -> None:
    with pytest.raises(InvalidRequest) as exc:
        make(grammars)
    assert exc.value.param == param and param in str(exc.value)
