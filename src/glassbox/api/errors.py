"""One error shape everywhere, OpenAI's: {"error": {"message", "type", "param", "code"}}.

The only place where domain errors (glassbox.errors) become HTTP: one table from error class
to status and type. Bad input is a 4xx whose message names the field and says what to fix;
only bugs are 500s.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from glassbox.embeddings.jobs import QuotaExceeded
from glassbox.errors import (
    Aborted,
    Conflict,
    DiskFull,
    Forbidden,
    GlassboxError,
    InvalidOutput,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    RateLimited,
    TooLarge,
    Unauthenticated,
    Unavailable,
)

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


# The one table from domain error to HTTP: (status, OpenAI error type). An error class not
# listed takes the entry of its nearest listed base class (its MRO).
ERROR_STATUS: dict[type[GlassboxError], tuple[int, str]] = {
    GlassboxError: (500, "server_error"),
    InvalidRequest: (400, "invalid_request_error"),
    TooLarge: (413, "invalid_request_error"),
    NotFound: (404, "not_found_error"),
    ModelNotFound: (404, "invalid_request_error"),  # as OpenAI answers an unknown model
    Unauthenticated: (401, "authentication_error"),
    Forbidden: (403, "permission_error"),
    Conflict: (409, "conflict_error"),
    Aborted: (422, "invalid_request_error"),
    InvalidOutput: (422, "invalid_request_error"),  # the model could not give what was asked
    Unavailable: (503, "service_unavailable_error"),
    DiskFull: (507, "server_error"),  # Insufficient Storage: nothing was written
    RateLimited: (429, "rate_limit_error"),
    QuotaExceeded: (429, "rate_limit_error"),  # the message says when the quota resets
}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """The body of every error response (OpenAI's shape)."""

    error: ErrorDetail


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


# The errors any route may answer, declared on every route of the OpenAPI schema (in place of
# FastAPI's 422 with its `detail` body, which this server never sends): the request's own
# faults (validation is a 400 here), the key and limit checks every route runs, 503 and 507.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("Invalid request: the message names the field and says what to fix"),
    401: _error("No API key, or an unknown, expired or revoked one (when keys are required)"),
    403: _error("The key's scopes do not allow this request"),
    404: _error("No such object for this caller, or no such model"),
    409: _error("The object exists already, or is in a state that forbids the change"),
    413: _error("The body or a file is larger than this server accepts"),
    422: _error("Generation was aborted by the request's own rule, or its output is invalid"),
    429: _error("Rate limit or quota used up: retry after Retry-After seconds"),
    503: _error("Not available now (engine stopped, full, or timed out): retry later"),
    507: _error("The server's disk has no room for a file the request writes: nothing written"),
}


def status_of(exc: GlassboxError) -> tuple[int, str]:
    """(HTTP status, OpenAI error type) of a domain error."""
    return next(ERROR_STATUS[cls] for cls in type(exc).__mro__ if cls in ERROR_STATUS)


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def domain_error_body(exc: GlassboxError) -> dict[str, Any]:
    return error_body(exc.message, status_of(exc)[1], exc.param, exc.code)


def error_response(exc: GlassboxError) -> JSONResponse:
    # RFC 6750: a 401 names the scheme the client should authenticate with.
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthenticated) else None
    # RFC 9110: a 429 or 503 may say when to come back (rate limits, back-pressure, quotas:
    # every error that knows carries `retry_after`); the openai SDK waits that long.
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers = {"Retry-After": str(retry_after)}
    return JSONResponse(domain_error_body(exc), status_code=status_of(exc)[0], headers=headers)


def _field_path(loc: tuple) -> str:
    if loc and loc[0] in ("body", "query", "path", "header"):  # where, not which field
        loc = loc[1:]
    parts = [str(p) for p in loc]
    # Union members show up as loc parts ("str", "list[...]"); they name no field.
    parts = [p for p in parts if not (p[:1].isalpha() and ("[" in p or p in _TYPE_NAMES))]
    return ".".join(parts)


_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "function-after", "function-plain"}


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """A readable message for pydantic errors: 'field: what is wrong (got value)'. Errors of
    one field (the members of a union) are joined with 'or'."""
    by_param: dict[str, list[str]] = {}
    shown_input: dict[str, str] = {}
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            return "the request body is not valid JSON: " + err.get("msg", ""), None
        param = _field_path(tuple(err.get("loc", ())))
        if err.get("type") == "missing":
            text = "is required" if param else "a JSON request body is required"
        elif err.get("type") == "extra_forbidden":
            text = "is not a recognized request argument; remove it"
        else:
            text = err.get("msg", "invalid value").removeprefix("Value error, ")
            text = text.replace("Input should", "should", 1)
            got = err.get("input")
            if not isinstance(got, dict | list):
                shown = repr(got)
                shown_input[param] = shown if len(shown) <= 60 else shown[:57] + "..."
        texts = by_param.setdefault(param, [])
        if text not in texts:
            texts.append(text)
    if not by_param:
        return "invalid request", None
    parts = []
    for param, texts in by_param.items():
        if len(texts) > 1 and all(t.startswith("should be ") for t in texts):
            text = "should be " + " or ".join(t.removeprefix("should be ") for t in texts)
        else:
            text = " or ".join(texts)
        got = f" (got {shown_input[param]})" if param in shown_input else ""
        parts.append(f"'{param}' {text}{got}" if param else f"{text}{got}")
    more = f" (and {len(parts) - 3} more errors)" if len(parts) > 3 else ""
    return "; ".join(parts[:3]) + more, next(iter(by_param)) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GlassboxError)
    async def _domain_error(_: Request, exc: GlassboxError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        return JSONResponse(
            error_body(message, "invalid_request_error", param, None), status_code=400
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = "no such endpoint; see /docs for the endpoints this server offers"
        elif exc.status_code == 405:
            message = "method not allowed on this endpoint"
        kind = _TYPE_BY_STATUS.get(exc.status_code, "server_error")
        return JSONResponse(
            error_body(message, kind), status_code=exc.status_code, headers=exc.headers
        )
