"""Grammars for constrained decoding, compiled with llguidance and cached.

llguidance is the library OpenAI, llama.cpp, vLLM and SGLang wire in; it was measured
against xgrammar on the bundled model's tokenizer (benchmarks/grammar_libs.py, figures in
docs/architecture.md) and chosen for its compile time, its per-token mask time and its
errors. One `GrammarCompiler` per tokenizer turns what a request asks for into a
`CompiledGrammar` (the engine's `Grammar`):

    json_schema / json_object / regex / choice / lark
        --> llguidance grammar text --> LLMatcher (compiles; errors -> InvalidRequest)
        --> cached by (kind, source): each sequence gets a deep copy of the cached matcher

A schema that is not a valid JSON Schema, or that uses what llguidance cannot enforce, is
refused here, before any token is generated, with the path inside the schema at fault.

Objects are closed: an object schema that does not set `additionalProperties` gets no keys
beyond its `properties`, with `strict` or without (as vLLM's xgrammar and llama.cpp do; OpenAI's
strict mode requires it). Left open, a small model at temperature 1 invents keys until it runs
out of tokens: 13 of 100 answers of the bundled model over benchmarks/schemas.py did. A schema
that wants extra keys says `"additionalProperties": true` (or a schema for them).
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

import jsonschema
import llguidance
import llguidance.hf
from jsonschema.exceptions import best_match

from glassbox.errors import InvalidRequest
from glassbox.models.tokenizer import Tokenizer

# Compact JSON: no whitespace between tokens of the structure. With flexible whitespace a
# small model at temperature 1 can spend its whole budget on spaces and newlines between
# two keys; the JSON a client parses is the same either way.
JSON_OPTIONS: llguidance.JsonCompileOptions = {"whitespace_flexible": False}
CACHE_SIZE = 256


class CompiledGrammar:
    """A compiled grammar (the engine's `Grammar`): a matcher at the start, copied for each
    sequence."""

    def __init__(self, matcher: llguidance.LLMatcher, kind: str):
        self._start = matcher
        self.kind = kind

    def matcher(self) -> Matcher:
        return Matcher(self._start.deep_copy())


class Matcher:
    """One sequence's position in its grammar (the engine's `GrammarMatcher`)."""

    __slots__ = ("_m",)

    def __init__(self, matcher: llguidance.LLMatcher):
        self._m = matcher

    def fill_bitmask(self, address: int, nbytes: int) -> None:
        self._m.unsafe_compute_mask_ptr(address, nbytes)

    def consume(self, token_id: int) -> bool:
        return self._m.consume_token(token_id)

    def is_stopped(self) -> bool:
        return self._m.is_stopped()

    def is_accepting(self) -> bool:
        return self._m.is_accepting()

    def error(self) -> str | None:
        return self._m.get_error() if self._m.is_error() else None


class GrammarCompiler:
    def __init__(self, tokenizer: Tokenizer, vocab_size: int, cache_size: int = CACHE_SIZE):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.cache_size = cache_size
        self._ll_tokenizer: llguidance.LLTokenizer | None = None
        self._cache: OrderedDict[tuple[str, str], CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()
        self.compiled = 0  # grammars compiled (cache misses)

    @property
    def ll_tokenizer(self) -> llguidance.LLTokenizer:
        """llguidance's view of the tokenizer (~0.3 s to build, once)."""
        if self._ll_tokenizer is None:
            self._ll_tokenizer = llguidance.hf.from_tokenizer(
                self.tokenizer.hf, n_vocab=self.vocab_size
            )
        return self._ll_tokenizer

    # --- what requests ask for ------------------------------------------------------------

    def json_schema(self, schema: Any, *, param: str = "response_format") -> CompiledGrammar:
        """JSON that validates against `schema`, with its objects closed (see above)."""
        if not isinstance(schema, dict):
            raise InvalidRequest(f"{param}: the JSON schema must be an object", param=param)
        key = json.dumps(schema, sort_keys=True, separators=(",", ":"))

        def build() -> str:
            # On a cache miss only: the meta-schema check costs ~3 ms, a cached grammar none.
            check_schema(schema, param)
            return llguidance.LLMatcher.grammar_from_json_schema(
                closed_schema(schema), defaults=JSON_OPTIONS
            )

        return self._compile("json", key, build, param, schema)

    def response_format(self, fmt: Mapping[str, Any] | None) -> CompiledGrammar | None:
        """The grammar of OpenAI's `response_format` as JSON (`{"type": "json_object"}` or
        `{"type": "json_schema", "json_schema": {"schema": ...}}`); None for none or "text"."""
        if not fmt or fmt.get("type") == "text":
            return None
        if fmt.get("type") == "json_object":
            return self.json_object()
        return self.json_schema((fmt.get("json_schema") or {}).get("schema") or {})

    def json_object(self) -> CompiledGrammar:
        """Any JSON object (OpenAI's `json_object`)."""
        return self.json_schema({"type": "object"})

    def regex(self, pattern: str, param: str = "guided_regex") -> CompiledGrammar:
        return self._compile(
            "regex", pattern, lambda: llguidance.LLMatcher.grammar_from_regex(pattern), param
        )

    def choice(self, options: list[str], param: str = "guided_choice") -> CompiledGrammar:
        """Exactly one of the strings."""
        if not options or any(not isinstance(o, str) or not o for o in options):
            raise InvalidRequest(
                f"'{param}' must be a non-empty list of non-empty strings", param=param
            )
        alternatives = " | ".join(json.dumps(o) for o in dict.fromkeys(options))
        return self.lark(f"start: {alternatives}", param)

    def lark(self, grammar: str, param: str = "guided_grammar") -> CompiledGrammar:
        """A Lark grammar (llguidance's dialect: EBNF rules, regex terminals, `%json`)."""
        return self._compile(
            "lark", grammar, lambda: llguidance.LLMatcher.grammar_from_lark(grammar), param
        )

    # --- compiling ------------------------------------------------------------------------

    def _compile(
        self, kind: str, key: str, build, param: str, schema: dict | None = None
    ) -> CompiledGrammar:
        with self._lock:
            cached = self._cache.get((kind, key))
            if cached is not None:
                self._cache.move_to_end((kind, key))
                return cached
        try:
            text = build()
        except ValueError as exc:
            raise InvalidRequest(f"{param}: {exc}", param=param) from exc
        matcher = llguidance.LLMatcher(self.ll_tokenizer, text, log_level=0)
        if matcher.is_error():
            raise InvalidRequest(_explain(matcher.get_error(), param, schema), param=param)
        grammar = CompiledGrammar(matcher, kind)
        with self._lock:
            self.compiled += 1
            self._cache[(kind, key)] = grammar
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return grammar


def check_schema(schema: dict, param: str) -> None:
    """Refuse a schema that its own JSON Schema draft calls invalid, naming where."""
    try:
        validator = jsonschema.validators.validator_for(schema)
        error = best_match(validator(validator.META_SCHEMA).iter_errors(schema))
    except jsonschema.exceptions.SchemaError as exc:  # e.g. an unknown $schema
        raise InvalidRequest(f"{param}: invalid JSON schema: {exc.message}", param=param) from exc
    if error is not None:
        raise InvalidRequest(
            f"{param}: invalid JSON schema at '{_pointer(error.path)}': {error.message}",
            param=param,
        )


def closed_schema(schema: Any, in_all_of: bool = False) -> Any:
    """The schema with `additionalProperties: false` on every object schema that lists its
    `properties` and does not set it, except the parts of an `allOf` (each names only some
    of the object's keys). An object without `properties` (`{"type": "object"}`, OpenAI's
    `json_object`) is any object and stays open."""
    if isinstance(schema, list):
        return [closed_schema(s, in_all_of) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed_schema(v, k == "allOf") for k, v in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema and not in_all_of:
        out["additionalProperties"] = False
    return out


def _explain(error: str, param: str, schema: dict | None) -> str:
    """llguidance's message, with the path inside the schema of what it refers to."""
    message = error.strip()
    if schema is not None:
        path = locate(schema, message)
        if path is not None:
            return f"{param}: the JSON schema at '{path}' cannot be enforced: {message}"
        return f"{param}: the JSON schema cannot be enforced: {message}"
    return f"{param}: {message}"


def locate(schema: Any, message: str) -> str | None:
    """The JSON pointer of the first place in `schema` that `message` names: a key or a
    string value it quotes or ends with (llguidance says "Unimplemented keys: ["not"]",
    "Invalid type: strin", "Pointer '/$defs/x' does not exist")."""
    words = set(re.findall(r"[\"']([^\"']+)[\"']", message))
    tail = message.rsplit(": ", 1)[-1].strip()
    if tail:
        words.add(tail)
    words |= {w.lstrip("#") for w in words}
    nodes = list(_walk(schema, ()))
    for path, key, value in nodes:
        if key in words and not (len(path) > 1 and path[-2] == "properties"):
            return _pointer(path)
        if isinstance(value, str) and (value in words or value.lstrip("#") in words):
            return _pointer(path)
    for path, _, value in nodes:  # a value quoted inside the message (a regex's error)
        if isinstance(value, str) and len(value) > 1 and value in message:
            return _pointer(path)
    return None


def _walk(node: Any, path: tuple) -> Iterator[tuple[tuple, Any, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, key), key, value
            yield from _walk(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, (*path, i))


def _pointer(path) -> str:
    parts = [str(p).replace("~", "~0").replace("/", "~1") for p in path]
    return "/" + "/".join(parts) if parts else "/"
