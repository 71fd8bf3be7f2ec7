"""Compiling grammars with llguidance: the cache, and errors that name the schema path."""

from __future__ import annotations

import pytest

from glassbox.errors import InvalidRequest
from glassbox.structured.grammar import (
    MAX_SOURCE_CHARS,
    GrammarCompiler,
    _library_error,
    closed_schema,
    locate,
)


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


# --- hostile constraints: refused up front, before any token is generated ------------------


@pytest.mark.parametrize("pattern", ["a{99999999}", "((a{1000}){1000}){1000}"])
def test_a_regex_too_big_for_the_lexer_is_refused_before_generation(grammars, pattern) -> None:
    # llguidance accepts these and fails on the first generated token (out of lexer fuel)
    with pytest.raises(InvalidRequest) as exc:
        grammars.regex(pattern)
    assert exc.value.param == "guided_regex"
    assert "too large or complex" in str(exc.value) and "<state>" not in str(exc.value)


def test_a_refusal_is_cached_like_a_grammar(tiny_tokenizer, tiny_model) -> None:
    small = GrammarCompiler(tiny_tokenizer, tiny_model.config.vocab_size)
    for _ in range(2):
        with pytest.raises(InvalidRequest):
            small.regex("a{99999999}")
    with pytest.raises(InvalidRequest) as exc:
        small.lark("start: start")  # another kind: compiled once too
    assert small.compiled == 2
    schema = {"$ref": "#"}
    with pytest.raises(InvalidRequest):
        small.json_schema(schema)
    with pytest.raises(InvalidRequest) as exc:
        small.json_schema(schema, param="guided_json")  # cached, named for the new field
    assert exc.value.param == "guided_json" and str(exc.value).startswith("guided_json: ")
    assert small.compiled == 3


@pytest.mark.parametrize("pattern", ["\\", "ab\\", "a\\\\\\"])
def test_a_regex_ending_in_a_lone_backslash_is_invalid(grammars, pattern) -> None:
    # llguidance's regex_to_lark drops it: "\\" would become the empty regex
    with pytest.raises(InvalidRequest) as exc:
        grammars.regex(pattern)
    assert exc.value.param == "guided_regex" and "lone" in str(exc.value)


def test_an_escaped_backslash_at_the_end_is_a_backslash(grammars, tiny_tokenizer) -> None:
    assert accepts(grammars.regex("a\\\\"), tiny_tokenizer, "a\\")


@pytest.mark.parametrize(
    ("make", "param", "says"),
    [
        (lambda g: g.lark("start: start"), "guided_grammar", "matches no text"),
        (lambda g: g.lark('start: a\na: a b\nb: "x"'), "guided_grammar", "matches no text"),
        (lambda g: g.json_schema({"$ref": "#"}), "response_format", "$ref cycle"),
        (
            lambda g: g.json_schema(
                {
                    "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}},
                    "$ref": "#/$defs/a",
                },
                param="guided_json",
            ),  # fmt: skip
            "guided_json",
            "$ref cycle",
        ),
    ],
)
def test_a_grammar_that_matches_nothing_is_refused(grammars, make, param, says) -> None:
    # llguidance compiles these and fails on the first mask: the server used to answer 200
    # with an empty text
    with pytest.raises(InvalidRequest) as exc:
        make(grammars)
    assert exc.value.param == param and says in str(exc.value)
    assert "NoExtensionBias" not in str(exc.value)


def test_a_recursive_schema_that_can_end_is_valid(grammars, tiny_tokenizer) -> None:
    tree = {"$defs": {"node": {"type": "object", "properties": {
        "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}}}},
        "$ref": "#/$defs/node"}  # fmt: skip
    grammar = grammars.json_schema(tree)
    assert accepts(grammar, tiny_tokenizer, '{"children":[{},{"children":[]}]}')


@pytest.mark.parametrize(
    ("make", "param"),
    [
        (lambda g: g.regex("(" + "|".join(f"w{i}" for i in range(20_000)) + ")"), "guided_regex"),
        (
            lambda g: g.lark("start: " + " | ".join(f'"w{i}"' for i in range(20_000))),
            "guided_grammar",
        ),  # fmt: skip
        (lambda g: g.choice(["x" * 1_000_000]), "guided_choice"),
        (lambda g: g.choice([f"c{i}" for i in range(100_000)]), "guided_choice"),
    ],
)
def test_constraints_over_the_size_limit_are_refused_unread(grammars, make, param) -> None:
    before = grammars.compiled
    with pytest.raises(InvalidRequest) as exc:
        make(grammars)
    assert exc.value.param == param and f"limit is {MAX_SOURCE_CHARS}" in str(exc.value)
    assert grammars.compiled == before  # llguidance never saw it


def test_many_choices_are_one_lexeme(grammars, tiny_tokenizer) -> None:
    many = grammars.choice([f"c{i}" for i in range(10_000)])  # a rule of these takes 0.3 s
    assert accepts(many, tiny_tokenizer, "c9999") and not accepts(many, tiny_tokenizer, "c10000")
    prefixes = grammars.choice(["a", "ab", "abc"])
    for text in ("a", "ab", "abc"):
        assert accepts(prefixes, tiny_tokenizer, text)
    assert not accepts(prefixes, tiny_tokenizer, "abcd")


def test_a_panic_of_the_library_is_its_first_line_only() -> None:
    panic = "panic: assertion failed: x < u16::MAX\n<backtrace>\n   0: <unknown>\n   1: <unknown>"
    assert _library_error(panic) == "panic: assertion failed: x < u16::MAX"
    assert _library_error("NoExtensionBias\n<non-verbose/>") == "NoExtensionBias"
