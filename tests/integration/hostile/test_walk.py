"""Hostile input on every route: a walk over every operation of the live app's OpenAPI schema.

Each operation has a row in `BODIES`: a body the route would take (or NO_BODY, MULTIPART,
RAW_OR_JSON), and a route of the schema without one fails `test_every_route_is_walked`. From
it the walk sends, one at a time:

  body        malformed JSON (cut short, trailing garbage, bad UTF-8, not an object) and JSON
              nested 10,000 deep, as the whole body;
  strings     in every string of the body and every string field of the schema: 5 MB of text,
              a lone surrogate, a NUL byte, right-to-left/zero-width/combining characters;
  numbers     in every number: NaN, Infinity, 1e400, -1, 2**63;
  lists       in every list: 100,000 items;  objects: an object 500 levels deep;
  path        every path parameter as '../../etc/passwd', '..%2F..%2Fetc%2Fpasswd', '%00', a
              NUL byte, '..', 10,000 characters;
  query       every query parameter as those strings, and as those numbers;
  header      X-Glassbox-Tenant as '../../etc/passwd' (a tenant is a directory name).

Every answer is a 4xx in OpenAI's error shape, or a 2xx where the input is in fact valid: the
(route, place, kind) is then listed in `VALID` with the reason. Never a 5xx, never a hang
(30 s per request). After the walk /health answers 200, nothing runs or waits on the engine
and its KV blocks are back where they were once what the walk made is deleted, and no file
has appeared outside the server's cache folder.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from helpers.hostile import (
    MALFORMED_BODIES,
    MANY,
    NUMBER_KINDS,
    STRING_KINDS,
    TRAVERSALS,
    Hostile,
    dumps,
    error_of,
    files_outside,
    nested,
)
from helpers.server import TINY_NAME
from helpers.waiting import wait_until

TIMEOUT = 30  # seconds: a request without an answer by then hangs
NO_BODY = "no body"  # GET/DELETE: path, query and header only
MULTIPART = "multipart"  # /v1/files: a form with a file
HI = [{"role": "user", "content": "hi"}]
EMBER_MSG = [{"role": "user", "content": "hello"}]
VARIANT = {"session_id": "{ns}", "variant_id": "{variant}"}
VS = "/v1/vector_stores"

# A body each route takes ({kind} is the id of the stored object of that kind).
BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/v1/chat/completions"): {"model": TINY_NAME, "messages": HI, "max_tokens": 1,
                                       "temperature": 0.5, "stop": ["zz"], "seed": 1},
    ("POST", "/v1/completions"): {"model": TINY_NAME, "prompt": "hi", "max_tokens": 1,
                                  "temperature": 0.5, "seed": 1},
    ("GET", "/v1/models"): NO_BODY,
    ("GET", "/v1/models/{model_id}"): NO_BODY,
    ("POST", "/tokenize"): {"prompt": "hello"},
    ("POST", "/detokenize"): {"tokens": [1, 2, 3]},
    ("POST", "/features/search"): {"query": "pirate", "top_k": 2, **VARIANT},
    ("POST", "/features/inspect"): {"messages": HI, "top_k": 2, **VARIANT},
    ("POST", "/features/steer"): {"label": "Pirate speech", "value": 0.5, **VARIANT},
    ("GET", "/features/modified"): NO_BODY,
    ("POST", "/variants"): {"session_id": "{ns}", "variant_id": "made-by-walk",
                            "base_variant_id": "{variant}"},
    ("GET", "/variants"): NO_BODY,
    ("GET", "/variants/{session_id}/{variant_id}"): NO_BODY,
    ("PUT", "/variants/{session_id}/{variant_id}"): {
        "variant": {"base_model": TINY_NAME, "edits": [], "scopes": []}},
    ("DELETE", "/variants/{session_id}/{variant_id}"): NO_BODY,
    ("POST", "/states"): {"text": "hello", "config": {"temperature": 0.5, "seed": 1}},
    ("GET", "/states"): NO_BODY,
    ("GET", "/states/exports"): NO_BODY,
    ("DELETE", "/states/exports/{name}"): NO_BODY,
    ("GET", "/states/{state_id}"): NO_BODY,
    ("DELETE", "/states/{state_id}"): NO_BODY,
    ("POST", "/states/merge"): {"state_ids": ["{state}", "{other}"]},
    ("POST", "/states/import"): {"name": "{export}"},
    ("POST", "/states/{state_id}/fork"): {"token_index": 1},
    ("POST", "/states/{state_id}/rollback"): {"checkpoint": "c1"},
    ("POST", "/states/{state_id}/checkpoints"): {"name": "c1", "token_index": 1},
    ("GET", "/states/{state_id}/history"): NO_BODY,
    ("GET", "/states/{state_id}/diff/{other_id}"): NO_BODY,
    ("POST", "/states/{state_id}/export"): {"name": "walked"},
    ("GET", "/states/{state_id}/export"): NO_BODY,
    ("POST", "/generate/token"): {"state_id": "{state}", "max_tokens": 1, "temperature": 0.5,
                                  "seed": 1, "stop_sequences": ["zz"], "logprobs": 1},
    ("GET", "/analysis/tokens/{state_id}"): NO_BODY,
    ("POST", "/analysis/attention/{state_id}"): {"layer": 0, "head": 0, "threshold": 0.1},
    ("POST", "/analysis/cache/{state_id}"): {"layer_range": [0, 1]},
    ("POST", "/generate/beam"): {"state_id": "{state}", "num_beams": 2, "max_length": 1,
                                 "length_penalty": 1.0},
    ("GET", "/health"): NO_BODY,
    ("GET", "/health/ready"): NO_BODY,
    ("GET", "/metrics"): NO_BODY,
    ("GET", "/api/inference/v1/features/search"): NO_BODY,
    ("POST", "/api/inference/v1/features/rerank"): {"query": "pirate", "feature_ids": ["x"],
                                                    "top_k": 2},
    ("GET", "/api/inference/v1/features/"): NO_BODY,
    ("POST", "/api/inference/v1/features/lookup"): {"indices": [0]},
    ("POST", "/api/inference/v1/features/auto-edits"): {"specification": "pirate"},
    ("POST", "/api/inference/v1/attributions/neighbors"): {"feature_indices": [0], "top_k": 2},
    ("POST", "/api/inference/v1/chat-attribution/compute-features"): {"messages": EMBER_MSG},
    ("POST", "/api/inference/v1/chat-attribution/contrast"): {
        "dataset_1": [EMBER_MSG], "dataset_2": [EMBER_MSG], "k_to_add": 1, "k_to_remove": 1},
    ("POST", "/api/inference/v1/chat-attribution/compute-logits"): {"messages": EMBER_MSG,
                                                                    "top_k": 2},
    ("POST", "/api/inference/v1/chat/tokenize"): {"messages": EMBER_MSG},
    ("POST", "/api/inference/v1/chat/completions"): {"messages": EMBER_MSG,
                                                     "max_completion_tokens": 1},
    ("POST", "/tasks/classify"): {"text": "I love it", "labels": ["good", "bad"]},
    ("POST", "/tasks/extract"): {"text": "Ann met Bo.", "entity_types": [{"name": "p"}]},
    ("POST", "/tasks/answer"): {"question": "Who?", "passages": ["Ann did."]},
    ("POST", "/tasks/summarize"): {"text": "One. Two. Three.", "max_sentences": 1},
    ("POST", "/llm/chat/"): {"user_id": "user-walk", "initial_message": "hi", "max_tokens": 1,
                             "temperature": 0},
    ("GET", "/llm/chat/sessions/"): NO_BODY,
    ("POST", "/llm/chat/{session_id}/message/"): {"user_message": "x"},
    ("GET", "/llm/chat/{session_id}/history/"): NO_BODY,
    ("DELETE", "/llm/chat/{session_id}/"): NO_BODY,
    ("POST", "/v1/embeddings"): {"input": "hello"},
    ("GET", "/v1/embeddings/cache"): NO_BODY,
    ("DELETE", "/v1/embeddings/cache"): NO_BODY,
    ("POST", "/api/v1/embeddings/jobs"): {"user_id": "user-walk", "content": "text",
                                          "collection_id": "col-walk"},
    ("GET", "/api/v1/embeddings/jobs"): NO_BODY,
    ("GET", "/api/v1/embeddings/jobs/{job_id}"): NO_BODY,
    ("DELETE", "/api/v1/embeddings/jobs/{job_id}"): NO_BODY,
    ("POST", "/v1/files"): MULTIPART,
    ("GET", "/v1/files"): NO_BODY,
    ("GET", "/v1/files/{file_id}"): NO_BODY,
    ("DELETE", "/v1/files/{file_id}"): NO_BODY,
    ("GET", "/v1/files/{file_id}/content"): NO_BODY,
    ("POST", VS): {"name": "s", "file_ids": ["{file}"]},
    ("GET", VS): NO_BODY,
    ("GET", VS + "/{vector_store_id}"): NO_BODY,
    ("POST", VS + "/{vector_store_id}"): {"name": "n"},
    ("DELETE", VS + "/{vector_store_id}"): NO_BODY,
    ("POST", VS + "/{vector_store_id}/search"): {"query": "notes", "max_num_results": 2},
    ("POST", VS + "/{vector_store_id}/files"): {"file_id": "{file}"},
    ("GET", VS + "/{vector_store_id}/files"): NO_BODY,
    ("GET", VS + "/{vector_store_id}/files/{file_id}"): NO_BODY,
    ("POST", VS + "/{vector_store_id}/files/{file_id}"): {"attributes": {"x": "y"}},
    ("DELETE", VS + "/{vector_store_id}/files/{file_id}"): NO_BODY,
    ("GET", VS + "/{vector_store_id}/files/{file_id}/content"): NO_BODY,
    ("GET", "/admin/keys"): NO_BODY,
    ("POST", "/admin/keys"): {"scopes": ["read"], "name": "walked"},
    ("PATCH", "/admin/keys/{key_id}"): {"name": "walked", "scopes": ["read"],
                                         "requests_per_minute": 5},
    ("DELETE", "/admin/keys/{key_id}"): NO_BODY,
}  # fmt: skip

# Query parameters a route needs to get past its first check.
QUERIES: dict[str, dict[str, str]] = {
    "/features/modified": VARIANT,
    "/variants": {"session_id": "{ns}"},
    "/api/inference/v1/features/search": {"query": "pirate"},
}

TEXT_KINDS = {f"traversal:{v[:20]}" for v in TRAVERSALS} | {"lone-surrogate", "nul-byte"}

# (route glob, place glob, kinds, why): a 2xx for these is right, the input being valid.
VALID: list[tuple[str, str, set[str], str]] = [
    ("*", "*", {"unicode-odd"}, "right-to-left, zero-width and combining characters are text"),
    ("GET *", "query.*", TEXT_KINDS, "a filter that names nothing lists nothing"),
    ("GET /health*", "header.*", {"tenant-header"}, "/health names no tenant"),
    ("GET /metrics", "header.*", {"tenant-header"}, "/metrics names no tenant"),
    ("POST /v1/files", "form.*", TEXT_KINDS, "the name is the file's label only (it is stored "
     "by its id) and bytes that are not UTF-8 are read as Latin-1"),
    ("*", "body*.seed", {"minus-one", "2**63"}, "any integer seeds the generator"),
    ("*", "body.*_penalty", {"minus-one"}, "OpenAI's penalties range over [-2, 2]"),
    ("*", "body.top_k", {"minus-one", "2**63"}, "-1 (vLLM's) or past the vocabulary: no cut"),
    ("POST /generate/*", "body.max_*", {"2**63"}, "generates what the context has room for"),
    ("POST /llm/chat/", "body.max_tokens", {"2**63"}, "generates what the context has room for"),
    ("POST /api/inference/v1/chat/completions", "body.max_completion_tokens", {"2**63"},
     "Ember's max_completion_tokens is capped to the context left"),
    ("POST /generate/beam", "body.length_penalty", {"minus-one", "2**63"}, "any weight is one"),
    ("POST /generate/beam", "body.no_repeat_ngram_size", {"2**63"},
     "an n-gram longer than the text bans nothing"),
    ("POST /tasks/summarize", "body.max_*", {"2**63"}, "a bound past the text bounds nothing"),
    ("POST /api/v1/embeddings/jobs", "body.media_id", {"minus-one", "2**63"},
     "the caller's own opaque id"),
    ("POST /api/v1/embeddings/jobs", "body.priority", {"minus-one"}, "priorities may be negative"),
    # Big values the server handles in bounded time (the slow walk):
    ("POST *", "body.user", {"huge-string"}, "OpenAI's opaque end-user label: never read"),
    ("POST /v1/chat/completions", "body.service_tier", {"huge-string"}, "accepted and ignored"),
    ("POST /v1/chat/completions", "body.prompt_cache_key", {"huge-string"},
     "accepted and ignored (the prefix cache needs no key)"),
    ("POST /v1/chat/completions", "body.safety_identifier", {"huge-string"},
     "OpenAI's opaque end-user label: never read"),
    ("POST /v1/*completions", "body.guided_choice", {"many-items"},
     "100,000 equal choices compile as one terminal, in linear time"),
    ("POST /detokenize", "body.tokens", {"many-items"}, "a special token decodes to nothing"),
    ("POST /features/search", "body.query", {"huge-string"},
     "the embedding model reads the first 256 tokens of a text, as sentence-transformers does"),
    ("POST /api/inference/v1/features/auto-edits", "body.specification", {"huge-string"},
     "the embedding model reads the first 256 tokens of a text"),
    ("POST /v1/embeddings", "body.input", {"huge-string"},
     "the embedding model reads the first 256 tokens of a text"),
    ("POST /v1/vector_stores/*/search", "body.query", {"huge-string"},
     "the embedding model reads the first 256 tokens of a text"),
    ("POST /features/steer", "body.label", {"huge-string"},
     "a label that names no feature is searched by meaning, as Ember's set by label"),
    ("POST /features/steer", "body.value", {"minus-one", "2**63"},
     "any finite value is an edit (how coherent the output stays is the client's choice)"),
    ("POST /api/inference/v1/features/lookup", "body.indices", {"many-items"},
     "the same index, looked up once per entry"),
    ("POST /api/inference/v1/attributions/neighbors", "body.feature_indices", {"many-items"},
     "the same index, many times"),
    ("POST /api/inference/v1/chat-attribution/compute-features", "body.aggregate_by",
     {"huge-string"}, "ignored, as the goodfire SDK aggregates client side"),
    ("POST /api/inference/v1/chat-attribution/compute-logits", "body.filter_vocabulary",
     {"many-items"}, "the same token, many times"),
    ("POST /tasks/summarize", "body.text", {"huge-string"},
     "an extractive summary of a long text is its first sentences"),
    ("POST /tasks/summarize", "body.focus", {"many-items"}, "the same focus term, many times"),
    ("POST /api/v1/embeddings/jobs", "body.content", {"huge-string"},
     "a 5 MB document is a job's ordinary work: chunked, embedded and stored"),
    ("POST /v1/vector_stores", "body.description", {"huge-string"}, "a label, stored as given"),
    ("POST /admin/keys", "body.scopes", {"many-items"}, "the same scope, many times, is one"),
    ("PATCH /admin/keys/*", "body.scopes", {"many-items"}, "the same scope, many times, is one"),
]  # fmt: skip


def _path_ids(path: str, ids: dict[str, str]) -> dict[str, str]:
    """The stored object each path parameter names."""
    return {
        "state_id": ids["state"], "other_id": ids["other"], "name": ids["export"],
        "session_id": ids["ns"] if path.startswith("/variants") else ids["session"],
        "variant_id": ids["variant"], "model_id": TINY_NAME, "job_id": ids["job"],
        "file_id": ids["file"], "vector_store_id": ids["store"], "key_id": ids["key"],
    }  # fmt: skip


def _fill(template: Any, ids: dict[str, str]) -> Any:
    if isinstance(template, str):
        return template.format(**ids) if "{" in template else template
    if isinstance(template, dict):
        return {k: _fill(v, ids) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, ids) for v in template]
    return template


# --- the schema ---------------------------------------------------------------------------------


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m.upper(), p, op) for p, ops in spec["paths"].items() for m, op in ops.items()]


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _types(spec: dict[str, Any], schema: dict[str, Any]) -> set[str]:
    """The JSON types a schema allows (null left out)."""
    schema = _resolve(spec, schema)
    if "anyOf" in schema or "oneOf" in schema:
        return set().union(*(_types(spec, s) for s in schema.get("anyOf", schema.get("oneOf"))))
    kind = schema.get("type")
    return {kind} - {"null"} if kind else set()


def _body_fields(spec: dict[str, Any], op: dict[str, Any]) -> dict[str, set[str]]:
    """The top-level fields of an operation's JSON body and their types."""
    content = op.get("requestBody", {}).get("content", {}).get("application/json")
    if content is None:
        return {}
    schema = _resolve(spec, content["schema"])
    for member in schema.get("anyOf", []):
        if member.get("type") != "null":
            schema = _resolve(spec, member)
    return {name: _types(spec, s) for name, s in schema.get("properties", {}).items()}


# --- the hostile requests ------------------------------------------------------------------------


@dataclass
class Case:
    place: str  # body, body.messages.0.content, path.state_id, query.limit, header....
    kind: str
    path: str  # the URL path, filled
    params: dict[str, str]
    content: bytes | None = None
    headers: dict[str, str] | None = None


def _leaves(value: Any, place: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """(place, value) of every string, number, list and object in a body, the body aside."""
    if place:
        yield place, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*place, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, (*place, i))


def _replaced(body: Any, place: tuple, new: Any) -> Any:
    if not place:
        return new
    head, rest = place[0], place[1:]
    if isinstance(body, dict):
        return {**body, head: _replaced(body.get(head), rest, new)}
    copy = list(body)
    copy[head] = _replaced(copy[head], rest, new)
    return copy


def _values_for(sample: Any, types: set[str]) -> dict[str, Any]:
    """The hostile values for a place holding `sample` (or, for a field not in the body, of
    schema types `types`)."""
    kinds: dict[str, Any] = {}
    is_number = isinstance(sample, int | float) and not isinstance(sample, bool)
    if isinstance(sample, str) or (sample is None and "string" in types):
        kinds.update(STRING_KINDS)
    if is_number or (sample is None and types & {"integer", "number"}):
        kinds.update(NUMBER_KINDS)
    if isinstance(sample, list) or (sample is None and "array" in types):
        item = sample[0] if isinstance(sample, list) and sample else "x"
        kinds["many-items"] = [item] * MANY
    if isinstance(sample, dict) or (sample is None and "object" in types):
        kinds["nested-500"] = nested(500)
    return kinds


def _body_cases(path: str, body: Any, fields: dict[str, set[str]]) -> Iterator[Case]:
    for kind, raw in MALFORMED_BODIES.items():
        yield Case("body", kind, path, {}, raw)
    places = dict(_leaves(body))
    for name in fields:
        places.setdefault((name,), None)
    for place, sample in places.items():
        types = fields.get(place[0], set()) if len(place) == 1 else set()
        for kind, value in _values_for(sample, types).items():
            where = "body." + ".".join(str(p) for p in place)
            yield Case(where, kind, path, {}, dumps(_replaced(body, place, value)))


def _query_params(op: dict[str, Any], spec: dict[str, Any]) -> dict[str, set[str]]:
    return {
        p["name"]: _types(spec, p.get("schema", {}))
        for p in op.get("parameters", [])
        if p["in"] == "query"
    }


def _cases(method: str, template: str, op: dict, spec: dict, ids: dict) -> Iterator[Case]:
    body = _fill(BODIES[(method, template)], ids)
    path_ids = _path_ids(template, ids)
    path = template.format(**path_ids)
    query = _fill(QUERIES.get(template, {}), ids) if method == "GET" else {}
    for name in [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]:
        for value in TRAVERSALS:
            # '..' escaped too: as a bare segment the client would resolve it (RFC 3986)
            # and call another route.
            escaped = quote(value, safe="").replace(".", "%2E")
            hostile_path = template.format(**{**path_ids, name: escaped})
            yield Case(f"path.{name}", f"traversal:{value[:20]}", hostile_path, query)
    for name, types in _query_params(op, spec).items():
        values = {f"traversal:{v[:20]}": v for v in TRAVERSALS}
        values.update({k: v for k, v in STRING_KINDS.items() if k != "huge-string"})
        if types & {"integer", "number"}:
            values.update({"nan": "NaN", "infinity": "Infinity", "1e400": "1e400",
                           "minus-one": "-1", "2**63": str(2**63)})  # fmt: skip
        for kind, value in values.items():
            yield Case(f"query.{name}", kind, path, {**query, name: value})
    yield Case("header.X-Glassbox-Tenant", "tenant-header", path, query,
               headers={"X-Glassbox-Tenant": "../../etc/passwd"})  # fmt: skip
    if body == MULTIPART:
        names = {f"traversal:{v[:20]}": v for v in TRAVERSALS}
        names.update({k: v for k, v in STRING_KINDS.items() if k != "huge-string"})
        for kind, name in names.items():
            yield _form("form.file.filename", kind, path, name, "assistants")
        for kind, purpose in STRING_KINDS.items():
            yield _form("form.purpose", kind, path, "a.txt", purpose)
        for kind, raw in MALFORMED_BODIES.items():
            yield Case("body", kind, path, {}, raw)
    elif body != NO_BODY:
        yield from _body_cases(path, body, _body_fields(spec, op))


def _form(place: str, kind: str, path: str, filename: str, purpose: str) -> Case:
    """A multipart upload written by hand: httpx would refuse to encode a lone surrogate."""

    def enc(text: str) -> bytes:
        return text.encode("utf-8", "surrogatepass")

    b = b"--hostile-boundary\r\n"
    body = (b + b'Content-Disposition: form-data; name="purpose"\r\n\r\n' + enc(purpose)
            + b"\r\n" + b + b'Content-Disposition: form-data; name="file"; filename="'
            + enc(filename).replace(b'"', b"%22") + b'"\r\nContent-Type: text/plain\r\n\r\n'
            + b"text\r\n--hostile-boundary--\r\n")  # fmt: skip
    content_type = "multipart/form-data; boundary=hostile-boundary"
    return Case(place, kind, path, {}, body, headers={"content-type": content_type})


def _send(http: httpx.Client, method: str, case: Case) -> httpx.Response:
    headers = dict(case.headers or {})
    if case.content is not None and "content-type" not in headers:
        headers["content-type"] = "application/json"
    # Encoded here: httpx refuses to encode a lone surrogate (sent as its UTF-8-style bytes).
    query = urlencode({k: v.encode("utf-8", "surrogatepass") for k, v in case.params.items()})
    url = f"{case.path}?{query}" if query else case.path
    return http.request(method, url, content=case.content, headers=headers)


def _valid(method: str, template: str, case: Case) -> bool:
    route = f"{method} {template}"
    return any(
        fnmatch.fnmatchcase(route, r) and fnmatch.fnmatchcase(case.place, p) and case.kind in k
        for r, p, k, _ in VALID
    )


# --- the tests -----------------------------------------------------------------------------------


def test_every_route_is_walked(hostile: Hostile) -> None:
    routes = {(m, p) for m, p, _ in _operations(hostile.server.app.openapi())}
    missing = sorted(f"{m} {p}" for m, p in routes - set(BODIES))
    assert not missing, (
        "routes the hostile walk does not know (add a body to BODIES in "
        "tests/integration/hostile/test_walk.py): " + ", ".join(missing)
    )
    stale = sorted(f"{m} {p}" for m, p in set(BODIES) - routes)
    assert not stale, "BODIES rows for routes the schema no longer has: " + ", ".join(stale)


def _made(http: httpx.Client) -> set[tuple[str, str]]:
    """The states and chat sessions that exist (what the walk may add to)."""
    states = http.get("/states", params={"limit": 100}).json()["data"]
    sessions = http.get("/llm/chat/sessions/", params={"limit": 100}).json()
    sessions = sessions.get("data", sessions.get("sessions", []))
    return {("state", s["id"]) for s in states} | {("session", s["session_id"]) for s in sessions}


# Routes that need the feature dictionaries and their search index, built on first use (the
# concept vectors: about a minute on two busy cores): walked by the slow test.
FEATURE_ROUTES = {
    ("POST", "/features/search"), ("POST", "/features/inspect"), ("POST", "/features/steer"),
    ("GET", "/api/inference/v1/features/search"), ("POST", "/api/inference/v1/features/rerank"),
    ("GET", "/api/inference/v1/features/"), ("POST", "/api/inference/v1/features/lookup"),
    ("POST", "/api/inference/v1/features/auto-edits"),
    ("POST", "/api/inference/v1/attributions/neighbors"),
    ("POST", "/api/inference/v1/chat-attribution/compute-features"),
    ("POST", "/api/inference/v1/chat-attribution/contrast"),
    ("POST", "/api/inference/v1/chat-attribution/compute-logits"),
}  # fmt: skip
# The kinds that cost the server seconds each (5 MB to read, 100,000 items to check).
BIG_KINDS = {"huge-string", "many-items"}


def _big(case: Case) -> bool:
    """A case that costs seconds: 5 MB to read, 100,000 items, or a generation as long as
    the context (2**63 tokens asked of a route that caps them)."""
    capped = case.kind == "2**63" and case.place in ("body.max_tokens", "body.max_length")
    return case.kind in BIG_KINDS or capped


def test_hostile_input_on_every_route(hostile: Hostile) -> None:
    """Every route but the feature routes, every kind but the big ones."""
    _walk(hostile, lambda route, case: route not in FEATURE_ROUTES and not _big(case))


@pytest.mark.slow
def test_big_hostile_input_and_the_feature_routes(hostile: Hostile) -> None:
    """What the test above leaves out: the big kinds on every route, every kind on the
    feature routes."""
    _walk(hostile, lambda route, case: route in FEATURE_ROUTES or _big(case))


def _walk(hostile: Hostile, selected) -> None:
    http, ids = hostile.http, hostile.ids
    spec = hostile.server.app.openapi()
    before = _made(http)
    blocks = hostile.server.wait_idle()["kv_blocks_used"]
    failures: list[str] = []
    slowest: list[tuple[float, str]] = []
    sent = 0
    walk = httpx.Client(base_url=hostile.server.base_url, timeout=TIMEOUT)
    for method, template, op in _operations(spec):
        if (method, template) not in BODIES:
            continue  # test_every_route_is_walked names it
        for case in _cases(method, template, op, spec, ids):
            if not selected((method, template), case):
                continue
            what = f"{method} {template} [{case.place} = {case.kind}]"
            t0 = time.perf_counter()
            try:
                r = _send(walk, method, case)
            except httpx.TimeoutException:
                failures.append(f"{what}: no answer within {TIMEOUT} s (a hang)")
                continue
            except httpx.TransportError as exc:
                failures.append(f"{what}: the connection failed: {exc!r}")
                walk = httpx.Client(base_url=hostile.server.base_url, timeout=TIMEOUT)
                continue
            finally:
                sent += 1
                slowest.append((time.perf_counter() - t0, what))
            if r.is_success and _valid(method, template, case):
                continue
            try:
                error_of(r, what)
            except AssertionError as exc:
                failures.append(str(exc).splitlines()[0][:400])
    walk.close()
    slowest.sort(reverse=True)
    print(f"{sent} hostile requests; slowest:", *(f"{s:.2f}s {w}" for s, w in slowest[:8]))
    assert not failures, f"{len(failures)} of {sent} hostile requests:\n" + "\n".join(failures)

    assert http.get("/health").status_code == 200
    for kind, made in _made(http) - before:
        path = f"/states/{made}" if kind == "state" else f"/llm/chat/{made}/"
        assert http.delete(path).status_code in (200, 204, 404)
    # Fewer blocks is fine: a state may have been spilled to disk meanwhile.
    engine = hostile.server.engine
    wait_until(lambda: engine.stats()["kv_blocks_used"] <= blocks, timeout=10)
    stats = hostile.server.wait_idle(engine.stats()["kv_blocks_used"])
    assert stats["running"] == 0 and stats["waiting"] == 0, stats
    assert stats["kv_blocks_used"] <= blocks, f"KV blocks leaked by the walk: {stats}"


@pytest.fixture(autouse=True)
def _no_file_outside_the_cache(hostile: Hostile) -> Iterator[None]:
    yield
    assert not files_outside(hostile.root, hostile.cache), "a file appeared outside the cache"
