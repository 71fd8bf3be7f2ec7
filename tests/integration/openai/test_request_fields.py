"""Request fields: those accepted with no effect, those rejected (a 400 naming the field),
the OpenAPI page, a variant of another model, and the context limit on /v1/completions."""

from __future__ import annotations

import httpx
import pytest
from helpers.server import TINY_MAX_LEN, TINY_NAME

USER = [{"role": "user", "content": "Tell me about the sea"}]
GREEDY = {"messages": USER, "max_tokens": 12, "temperature": 0, "seed": 1}
PROMPT = {"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0, "seed": 1}


def ok(r: httpx.Response) -> dict:
    assert r.status_code == 200, r.text
    return r.json()


def error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def unsupported(param: str, what: str | None = None) -> dict:
    detail = f": {what}" if what else ""
    return {
        "message": f"'{param}' is not supported yet{detail}; remove it from the request",
        "type": "invalid_request_error",
        "param": param,
        "code": "unsupported_parameter",
    }


# --- accepted, no effect -----------------------------------------------------------------


def test_chat_fields_that_have_no_effect(http: httpx.Client) -> None:
    plain = ok(http.post("/v1/chat/completions", json=GREEDY))
    extras = [
        {"user": "user-1234"},
        {"metadata": {"purpose": "test", "run": "7"}},
        {"store": True},
        {"store": False},
        {"service_tier": "default"},
        {"service_tier": "flex"},
        {
            "user": "u",
            "metadata": {"a": "b"},
            "store": True,
            "service_tier": "auto",
            "response_format": {"type": "text"},
        },
    ]
    for extra in extras:
        got = ok(http.post("/v1/chat/completions", json={**GREEDY, **extra}))
        assert got["choices"] == plain["choices"], extra
        assert got["usage"] == plain["usage"], extra
        assert got["model"] == TINY_NAME


def test_completion_fields_that_have_no_effect(http: httpx.Client) -> None:
    plain = ok(http.post("/v1/completions", json=PROMPT))
    for extra in [{"user": "user-1234"}, {"best_of": 1}, {"echo": False, "logprobs": 2}]:
        got = ok(http.post("/v1/completions", json={**PROMPT, **extra}))
        assert [c["text"] for c in got["choices"]] == [c["text"] for c in plain["choices"]], extra
        assert got["usage"] == plain["usage"], extra


# --- rejected: a 400 naming the field ------------------------------------------------------

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"functions": [TOOL["function"]]}, unsupported("functions")),
        ({"function_call": {"name": "f"}}, unsupported("function_call")),
        ({"modalities": ["text", "audio"]}, unsupported("modalities", "only ['text']")),
        ({"audio": {"voice": "alloy", "format": "wav"}}, unsupported("audio")),
        ({"prediction": {"type": "content", "content": "x"}}, unsupported("prediction")),
        ({"reasoning_effort": "low"}, unsupported("reasoning_effort")),
        ({"web_search_options": {}}, unsupported("web_search_options")),
    ],
    ids=lambda v: v["param"] if "param" in v else "",
)
def test_chat_fields_not_supported_yet(http: httpx.Client, extra: dict, expected: dict) -> None:
    got = error(http.post("/v1/chat/completions", json={**GREEDY, **extra}), 400)
    assert got == expected


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"suffix": "The end."}, unsupported("suffix")),
        ({"n": 1, "best_of": 2}, unsupported("best_of", "best_of greater than n")),
        ({"n": 2, "best_of": 3}, unsupported("best_of", "best_of greater than n")),
        (
            {"echo": True, "logprobs": 1},
            unsupported("echo", "echo together with logprobs (prompt logprobs)"),
        ),
        (
            {"echo": True, "logprobs": 0},
            unsupported("echo", "echo together with logprobs (prompt logprobs)"),
        ),
    ],
    ids=["suffix", "best_of-1", "best_of-2", "echo-logprobs-1", "echo-logprobs-0"],
)
def test_completion_fields_not_supported_yet(
    http: httpx.Client, extra: dict, expected: dict
) -> None:
    got = error(http.post("/v1/completions", json={**PROMPT, **extra}), 400)
    assert got == expected


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "file", "file": {"file_id": "f"}},
    ],
    ids=lambda p: p["type"],
)
def test_non_text_content_parts_are_rejected(http: httpx.Client, part: dict) -> None:
    content = [{"type": "text", "text": "What is this?"}, part]
    body = {**GREEDY, "messages": [{"role": "user", "content": content}]}
    got = error(http.post("/v1/chat/completions", json=body), 400)
    assert got["type"] == "invalid_request_error"
    assert got["param"] == "messages.0.content"
    says = f"'messages.0.content.1' content parts of type '{part['type']}' are not supported yet"
    assert says in got["message"]


def test_text_content_parts_are_the_same_as_a_string(http: httpx.Client) -> None:
    plain = ok(http.post("/v1/chat/completions", json=GREEDY))
    parts = [{"type": "text", "text": USER[0]["content"]}]
    body = {**GREEDY, "messages": [{"role": "user", "content": parts}]}
    assert ok(http.post("/v1/chat/completions", json=body))["choices"] == plain["choices"]


@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/chat/completions", GREEDY), ("/v1/completions", PROMPT)],
    ids=["chat", "completions"],
)
def test_unknown_fields_are_rejected(http: httpx.Client, path: str, body: dict) -> None:
    got = error(http.post(path, json={**body, "temprature": 0.5}), 400)
    assert got["param"] == "temprature"
    assert got["message"] == "'temprature' is not a recognized request argument; remove it"
    assert got["type"] == "invalid_request_error"


def test_chat_only_fields_are_unknown_on_completions(http: httpx.Client) -> None:
    got = error(http.post("/v1/completions", json={**PROMPT, "tools": [TOOL]}), 400)
    assert got["param"] == "tools"
    assert "not a recognized request argument" in got["message"]


# --- the OpenAPI page ----------------------------------------------------------------------


def test_docs_serves_the_openapi_page(http: httpx.Client) -> None:
    r = http.get("/docs")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "<title>glassbox - Swagger UI</title>" in r.text
    assert "/openapi.json" in r.text


DOCUMENTED = {
    "/v1/chat/completions": {"post"},
    "/v1/completions": {"post"},
    "/v1/models": {"get"},
    "/v1/models/{model_id}": {"get"},
    "/tokenize": {"post"},
    "/detokenize": {"post"},
    "/health": {"get"},
    "/metrics": {"get"},
    "/features/search": {"post"},
    "/features/inspect": {"post"},
    "/features/steer": {"post"},
    "/features/modified": {"get"},
    "/variants": {"get", "post"},
    "/variants/{session_id}/{variant_id}": {"get", "put", "delete"},
    "/states": {"get", "post"},
    "/states/{state_id}": {"get", "delete"},
    "/generate/token": {"post"},
    "/generate/beam": {"post"},
    "/states/{state_id}/fork": {"post"},
    "/states/{state_id}/checkpoints": {"post"},
    "/states/{state_id}/rollback": {"post"},
    "/states/{state_id}/history": {"get"},
    "/states/{state_id}/diff/{other_id}": {"get"},
    "/states/merge": {"post"},
    "/states/{state_id}/export": {"get", "post"},
    "/states/import": {"post"},
    "/states/exports": {"get"},
    "/states/exports/{name}": {"delete"},
    "/analysis/tokens/{state_id}": {"get"},
    "/analysis/attention/{state_id}": {"post"},
    "/analysis/cache/{state_id}": {"post"},
    "/api/inference/v1/chat/completions": {"post"},
    "/api/inference/v1/features/search": {"get"},
    "/api/inference/v1/features/lookup": {"post"},
}


def test_openapi_lists_the_documented_paths(http: httpx.Client) -> None:
    spec = ok(http.get("/openapi.json"))
    assert spec["info"]["title"] == "glassbox"
    paths = spec["paths"]
    missing = {p: m for p, m in DOCUMENTED.items() if not m <= set(paths.get(p, {}))}
    assert missing == {}


# --- a variant of another model ------------------------------------------------------------


def test_a_variant_of_another_model_is_model_not_found(http: httpx.Client) -> None:
    variant = {"base_model": "someone/else", "edits": [], "scopes": []}
    got = error(http.post("/v1/chat/completions", json={**GREEDY, "variant": variant}), 404)
    assert got["code"] == "model_not_found"
    assert got["param"] == "variant.base_model"
    assert "'someone/else'" in got["message"] and repr(TINY_NAME) in got["message"]


# --- the context limit on /v1/completions --------------------------------------------------


def test_completion_prompt_longer_than_the_context(http: httpx.Client) -> None:
    prompt = "Hello world " * TINY_MAX_LEN
    count = ok(http.post("/tokenize", json={"prompt": prompt}))["count"]
    got = error(http.post("/v1/completions", json={"prompt": prompt}), 400)
    assert got["code"] == "context_length_exceeded"
    assert got["param"] == "prompt" and got["type"] == "invalid_request_error"
    assert f"maximum context length is {TINY_MAX_LEN} tokens" in got["message"]
    assert str(count) in got["message"]


def test_completion_prompt_plus_max_tokens_longer_than_the_context(http: httpx.Client) -> None:
    count = ok(http.post("/tokenize", json={"prompt": PROMPT["prompt"]}))["count"]
    room = TINY_MAX_LEN - count
    body = {**PROMPT, "max_tokens": room + 1}
    got = error(http.post("/v1/completions", json=body), 400)
    assert got["code"] == "context_length_exceeded"
    assert got["param"] == "max_tokens" and got["type"] == "invalid_request_error"
    assert f"maximum context length is {TINY_MAX_LEN} tokens" in got["message"]
    assert f"{count} in the prompt" in got["message"] and f"at most {room}" in got["message"]
    fits = ok(http.post("/v1/completions", json={**PROMPT, "max_tokens": room}))
    assert fits["usage"]["prompt_tokens"] == count
