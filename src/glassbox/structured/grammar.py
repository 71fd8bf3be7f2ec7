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

Some faults llguidance finds only once a matcher runs: a grammar that matches nothing (`start:
start`, a schema whose `$ref`s only cycle) fails on the first mask, and a regex too big for
its lexer (`a{99999999}`, a choice of a million characters) runs out of lexer fuel on the
first token. So each new grammar is started once here, on a copy of its matcher, as generation
would start it (`_probe`: the first mask, one allowed token, the next mask); what fails is a
400 naming the field, and the refusal is cached like a grammar, so that sending it again costs
nothing. A regex, a Lark grammar or the choices of `guided_choice` longer than
MAX_SOURCE_CHARS are refused before llguidance sees them (Lark rules of many alternatives
compile in quadratic time: 40,000 take 4 s, and llguidance asserts below 65,536 symbols).

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
import numpy as np
from jsonschema.exceptions import best_match

from glassbox.errors import InvalidRequest
from glassbox.models.tokenizer import Tokenizer

# Compact JSON: no whitespace between tokens of the structure. With flexible whitespace a
# small model at temperature 1 can spend its whole budget on spaces and newlines between
# two keys; the JSON a client parses is the same either way.
JSON_OPTIONS: llguidance.JsonCompileOptions = {"whitespace_flexible": False}
CACHE_SIZE = 256
# Characters of a regex, a Lark grammar, or all the choices of guided_choice together.
MAX_SOURCE_CHARS = 100_000
# llguidance's default limits, without the parser state (which quotes generated text) in errors.
LIMITS = llguidance.LLParserLimits(verbose_errors=False)


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
        _check_size(pattern, param, "the regex")
        if (len(pattern) - len(pattern.rstrip("\\"))) % 2:
            # llguidance's regex_to_lark drops a trailing lone backslash, which would turn
            # the invalid regex "\\" into the empty one
            raise InvalidRequest(
                f"{param}: invalid regex: it ends with a lone '\\' (an escape of nothing)",
                param=param,
            )
        return self._compile(
            "regex", pattern, lambda: llguidance.LLMatcher.grammar_from_regex(pattern), param
        )

    def choice(self, options: list[str], param: str = "guided_choice") -> CompiledGrammar:
        """Exactly one of the strings: one lexeme (a terminal that is the alternatives), which
        llguidance compiles in linear time, where a rule of many alternatives takes quadratic
        time."""
        if not options or any(not isinstance(o, str) or not o for o in options):
            raise InvalidRequest(
                f"'{param}' must be a non-empty list of non-empty strings", param=param
            )
        size = sum(len(o) for o in options)
        if size > MAX_SOURCE_CHARS:
            raise InvalidRequest(
                f"{param}: the choices have {size} characters in all; the limit is "
                f"{MAX_SOURCE_CHARS}",
                param=param,
            )
        alternatives = " | ".join(json.dumps(o) for o in dict.fromkeys(options))
        return self.lark(f"start: CHOICE\nCHOICE: {alternatives}", param, max_chars=None)

    def lark(
        self,
        grammar: str,
        param: str = "guided_grammar",
        *,
        max_chars: int | None = MAX_SOURCE_CHARS,
    ) -> CompiledGrammar:
        """A Lark grammar (llguidance's dialect: EBNF rules, regex terminals, `%json`), of at
        most `max_chars` characters (None: the grammars glassbox writes, e.g. of tools)."""
        if max_chars is not None:
            _check_size(grammar, param, "the grammar", max_chars)
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
        if isinstance(cached, CompiledGrammar):
            return cached
        if cached is not None:  # a refusal, without the field's name
            raise InvalidRequest(f"{param}: {cached}", param=param)
        try:
            grammar: CompiledGrammar | str = self._build(kind, key, build, schema)
        except _Refused as refused:
            grammar = refused.reason
        with self._lock:
            self.compiled += 1
            self._cache[(kind, key)] = grammar
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        if isinstance(grammar, str):
            raise InvalidRequest(f"{param}: {grammar}", param=param)
        return grammar

    def _build(self, kind: str, key: str, build, schema: dict | None) -> CompiledGrammar:
        """The compiled grammar, started once (`_probe`); _Refused with the reason (without
        the field's name) otherwise."""
        if schema is not None and len(key) <= MAX_SOURCE_CHARS:
            # the meta-schema check names the path at fault (~3 ms, on a cache miss only);
            # on a huge schema it can take seconds (jsonschema's uniqueItems is quadratic), so
            # such a schema goes to llguidance first, which bounds what it compiles
            _refuse(schema_fault(schema))
        try:
            text = build()
        except ValueError as exc:
            raise _Refused(_library_error(str(exc))) from exc
        matcher = llguidance.LLMatcher(self.ll_tokenizer, text, log_level=0, limits=LIMITS)
        if matcher.is_error():
            raise _Refused(_explain(_library_error(matcher.get_error()), schema))
        failure = self._probe(matcher)
        if failure is not None:
            raise _Refused(_explain_start(failure, kind, key, schema))
        if schema is not None and len(key) > MAX_SOURCE_CHARS:
            _refuse(schema_fault(schema))
        return CompiledGrammar(matcher, kind)

    def _probe(self, matcher: llguidance.LLMatcher) -> str | None:
        """Start a copy of `matcher` as generation would (the first mask, the first token it
        allows that does not end the text, the next mask): llguidance's error, or None."""
        m = matcher.deep_copy()
        mask = m.compute_bitmask()
        if m.is_error():
            return m.get_error()
        allowed = np.flatnonzero(np.unpackbits(np.frombuffer(mask, np.uint8), bitorder="little"))
        ends = set(self.ll_tokenizer.eos_tokens)
        token = next((int(t) for t in allowed if int(t) not in ends), None)
        if token is None:
            return None
        if m.consume_token(token) and not m.is_stopped():
            m.compute_bitmask()
        return m.get_error() if m.is_error() else None


class _Refused(Exception):
    """Why a grammar is refused, without the field's name (the refusal is cached)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _refuse(reason: str | None) -> None:
    if reason is not None:
        raise _Refused(reason)


def _check_size(text: str, param: str, what: str, limit: int = MAX_SOURCE_CHARS) -> None:
    if len(text) > limit:
        raise InvalidRequest(
            f"{param}: {what} has {len(text)} characters; the limit is {limit}", param=param
        )


def _first_line(message: str) -> str:
    return message.strip().split("\n", 1)[0].strip()


def _library_error(error: str) -> str:
    """llguidance's message without what follows it: the parser state (`<state>`,
    `<non-verbose/>`) and, for a panic of the library, the backtrace (the first line only)."""
    message = error.strip()
    if message.startswith("panic") or "<backtrace>" in message:
        return _first_line(message)
    return message.split("\n<", 1)[0].strip()


def _explain_start(error: str, kind: str, key: str, schema: dict | None) -> str:
    """The reason of a grammar that failed when started (`_probe`)."""
    message = _library_error(error)
    if message.startswith("NoExtensionBias"):  # not even the first byte can be generated
        if schema is not None:
            why = ": the schema has a $ref cycle that admits no value" if "$ref" in key else ""
            return f"no JSON value satisfies the schema{why}"
        if kind == "lark":
            return (
                "the grammar matches no text: no rule ends (e.g. 'start: start', a rule that "
                "only refers to itself)"
            )
        return f"the {kind} matches no text"
    what = {"json": "the JSON schema", "lark": "the grammar", "regex": "the regex"}[kind]
    return f"{what} is too large or complex to enforce: {_first_line(message)}"


def check_schema(schema: dict, param: str) -> None:
    """Refuse a schema that its own JSON Schema draft calls invalid, naming where."""
    fault = schema_fault(schema)
    if fault is not None:
        raise InvalidRequest(f"{param}: {fault}", param=param)


def schema_fault(schema: dict) -> str | None:
    """What the schema's own JSON Schema draft finds wrong with it, and where; None if
    nothing."""
    try:
        validator = jsonschema.validators.validator_for(schema)
        error = best_match(validator(validator.META_SCHEMA).iter_errors(schema))
    except jsonschema.exceptions.SchemaError as exc:  # e.g. an unknown $schema
        return f"invalid JSON schema: {exc.message}"
    if error is not None:
        return f"invalid JSON schema at '{_pointer(error.path)}': {error.message}"
    return None


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


def _explain(error: str, schema: dict | None) -> str:
    """llguidance's message, with the path inside the schema of what it refers to."""
    message = error.strip()
    if schema is not None:
        path = locate(schema, message)
        if path is not None:
            return f"the JSON schema at '{path}' cannot be enforced: {message}"
        return f"the JSON schema cannot be enforced: {message}"
    return message


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
