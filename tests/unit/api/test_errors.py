"""Every domain error, raised from a route, gives the status and error body written out here.

The classes are found by walking GlassboxError's subclasses after importing every glassbox
module, so a new error class fails this test until it has a row in CASES.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import NamedTuple

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import glassbox
from glassbox.api.errors import install_error_handlers
from glassbox.backends.openai_upstream import UpstreamError, UpstreamRejected
from glassbox.embeddings.jobs import QuotaExceeded
from glassbox.embeddings.providers import CircuitOpen, ProviderError
from glassbox.engine.errors import EngineDeadError, OutOfBlocks, PromptTooLong, RequestRejected
from glassbox.errors import (
    Aborted,
    Conflict,
    ContextLengthExceeded,
    DiskFull,
    Forbidden,
    GenerationTimeout,
    GlassboxError,
    InvalidOutput,
    InvalidRequest,
    LimitReached,
    ModelNotFound,
    NotCapable,
    NotFound,
    Overloaded,
    RateLimited,
    TooLarge,
    Unauthenticated,
    Unavailable,
    Unsupported,
)


class Case(NamedTuple):
    make: Callable[[], GlassboxError]
    status: int
    type: str
    code: str | None
    param: str | None
    message: str


CASES: dict[type[GlassboxError], Case] = {
    InvalidRequest: Case(
        lambda: InvalidRequest("'n' must be 1 with beam search", param="n"),
        400, "invalid_request_error", None, "n", "'n' must be 1 with beam search",
    ),
    Unsupported: Case(
        lambda: Unsupported("tools", "tool calls"),
        400, "invalid_request_error", "unsupported_parameter", "tools",
        "'tools' is not supported yet: tool calls; remove it from the request",
    ),
    NotCapable: Case(
        lambda: NotCapable("model 'big' is served by the 'openai-upstream' backend, which "
                           "cannot do 'steering'", param="variant"),
        400, "invalid_request_error", "unsupported_capability", "variant",
        "model 'big' is served by the 'openai-upstream' backend, which cannot do 'steering'",
    ),
    UpstreamRejected: Case(
        lambda: UpstreamRejected("http://gpu:8000/v1: upstream error 400: bad", param="n"),
        400, "invalid_request_error", "upstream_rejected", "n",
        "http://gpu:8000/v1: upstream error 400: bad",
    ),
    UpstreamError: Case(
        lambda: UpstreamError("no upstream of model 'big' answered: ..."),
        503, "service_unavailable_error", "upstream_unavailable", None,
        "no upstream of model 'big' answered: ...",
    ),
    ContextLengthExceeded: Case(
        lambda: ContextLengthExceeded("40 prompt tokens + 10 new exceed 32", param="max_tokens"),
        400, "invalid_request_error", "context_length_exceeded", "max_tokens",
        "40 prompt tokens + 10 new exceed 32",
    ),
    TooLarge: Case(
        lambda: TooLarge("the file is larger than 64 MiB", param="file"),
        413, "invalid_request_error", None, "file", "the file is larger than 64 MiB",
    ),
    NotFound: Case(
        lambda: NotFound("kv state", "st_1"),
        404, "not_found_error", "kv_state_not_found", None, "No kv state with id 'st_1'",
    ),
    ModelNotFound: Case(
        lambda: ModelNotFound("gpt-9", "The model 'gpt-9' does not exist"),
        404, "invalid_request_error", "model_not_found", "model",
        "The model 'gpt-9' does not exist",
    ),
    Unauthenticated: Case(
        lambda: Unauthenticated("the API key is not valid"),
        401, "authentication_error", "invalid_api_key", None, "the API key is not valid",
    ),
    Forbidden: Case(
        lambda: Forbidden("this key is read-only: it may only GET"),
        403, "permission_error", "insufficient_scope", None,
        "this key is read-only: it may only GET",
    ),
    Conflict: Case(
        lambda: Conflict("a variant named 'pirate' exists already", param="name"),
        409, "conflict_error", None, "name", "a variant named 'pirate' exists already",
    ),
    Aborted: Case(
        lambda: Aborted("stopped by abort_when scope 0", scope=0),
        422, "invalid_request_error", "inference_aborted", None, "stopped by abort_when scope 0",
    ),
    InvalidOutput: Case(
        lambda: InvalidOutput("the answer did not validate against City after 3 attempts"),
        422, "invalid_request_error", "invalid_model_output", None,
        "the answer did not validate against City after 3 attempts",
    ),
    Unavailable: Case(
        lambda: Unavailable("the model is still loading"),
        503, "service_unavailable_error", None, None, "the model is still loading",
    ),
    DiskFull: Case(
        lambda: DiskFull("the server's state directory is full (no space left on device)"),
        507, "server_error", "insufficient_storage", None,
        "the server's state directory is full (no space left on device)",
    ),
    ProviderError: Case(
        lambda: ProviderError("http://gpu:8000/v1/embeddings: error 500: boom"),
        503, "service_unavailable_error", "embedding_provider_failed", None,
        "http://gpu:8000/v1/embeddings: error 500: boom",
    ),
    CircuitOpen: Case(
        lambda: CircuitOpen("circuit open, next probe in 12.5 s"),
        503, "service_unavailable_error", "circuit_open", None,
        "circuit open, next probe in 12.5 s",
    ),
    RequestRejected: Case(
        lambda: RequestRejected("token id 99999 is outside the vocabulary", param="prompt"),
        400, "invalid_request_error", None, "prompt", "token id 99999 is outside the vocabulary",
    ),
    PromptTooLong: Case(
        lambda: PromptTooLong("the prompt has 40 tokens; the context holds 32"),
        400, "invalid_request_error", "context_length_exceeded", None,
        "the prompt has 40 tokens; the context holds 32",
    ),
    OutOfBlocks: Case(
        lambda: OutOfBlocks("no free KV blocks for 40 tokens"),
        503, "service_unavailable_error", "kv_cache_full", None,
        "no free KV blocks for 40 tokens; try again when running requests have finished",
    ),
    QuotaExceeded: Case(
        lambda: QuotaExceeded("user 'u1' (free tier) may embed 100 chunks a day and has 10 "
                              "left today; ...", retry_after=3600),
        429, "rate_limit_error", "quota_exceeded", None,
        "user 'u1' (free tier) may embed 100 chunks a day and has 10 left today; ...",
    ),
    RateLimited: Case(
        lambda: RateLimited("rate limit reached: 60 requests per minute for this API key's "
                            "tenant; retry in 12 s", retry_after=12),
        429, "rate_limit_error", "rate_limit_exceeded", None,
        "rate limit reached: 60 requests per minute for this API key's tenant; retry in 12 s",
    ),
    Overloaded: Case(
        lambda: Overloaded("the server is busy: 256 sequences are waiting", retry_after=1),
        503, "service_unavailable_error", "server_overloaded", None,
        "the server is busy: 256 sequences are waiting",
    ),
    GenerationTimeout: Case(
        lambda: GenerationTimeout("the generation took longer than 600 s"),
        503, "service_unavailable_error", "generation_timeout", None,
        "the generation took longer than 600 s",
    ),
    LimitReached: Case(
        lambda: LimitReached("this tenant keeps 3 files", param="file"),
        400, "invalid_request_error", "limit_reached", "file", "this tenant keeps 3 files",
    ),
    EngineDeadError: Case(
        lambda: EngineDeadError("the engine thread has stopped"),
        503, "service_unavailable_error", "engine_dead", None, "the engine thread has stopped",
    ),
}  # fmt: skip


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _domain_errors() -> set[type[GlassboxError]]:
    for module in pkgutil.walk_packages(glassbox.__path__, "glassbox."):
        importlib.import_module(module.name)
    # Only glassbox's own: tests may define subclasses of their own.
    return {c for c in _subclasses(GlassboxError) if c.__module__.startswith("glassbox.")}


def test_every_domain_error_has_a_case():
    found = _domain_errors()
    missing = sorted(f"{c.__module__}.{c.__qualname__}" for c in found - CASES.keys())
    assert not missing, f"domain errors without a row in CASES: {missing}"
    stale = sorted(c.__qualname__ for c in CASES.keys() - found)
    assert not stale, f"rows in CASES for classes that are no domain errors: {stale}"


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    by_name = {cls.__name__: case for cls, case in CASES.items()}

    @app.get("/raise/{name}")
    def _raise(name: str) -> None:
        raise by_name[name].make()

    return TestClient(app)


@pytest.mark.parametrize("cls", list(CASES), ids=lambda cls: cls.__name__)
def test_error_becomes_its_status_and_body(client: TestClient, cls: type[GlassboxError]):
    case = CASES[cls]
    assert type(case.make()) is cls

    r = client.get(f"/raise/{cls.__name__}")

    assert r.status_code == case.status, r.text
    assert r.json() == {
        "error": {
            "message": case.message,
            "type": case.type,
            "param": case.param,
            "code": case.code,
        }
    }


def test_a_401_names_the_bearer_scheme_and_other_errors_no_scheme(client: TestClient):
    assert client.get("/raise/Unauthenticated").headers["www-authenticate"] == "Bearer"
    assert "www-authenticate" not in client.get("/raise/Forbidden").headers


def test_a_429_and_an_overload_say_when_to_retry_and_other_errors_do_not(client: TestClient):
    assert client.get("/raise/RateLimited").headers["retry-after"] == "12"
    assert client.get("/raise/Overloaded").headers["retry-after"] == "1"
    assert "retry-after" not in client.get("/raise/Unavailable").headers
