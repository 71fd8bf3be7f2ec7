"""One error shape everywhere, OpenAI's: {"error": {"message", "type", "param", "code"}}.

Bad input is a 4xx whose message names the field and says what to fix; only bugs are 500s.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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


class APIError(Exception):
    """An error a service raises for the client to see, with OpenAI's fields."""

    def __init__(
        self,
        message: str,
        status_code: int = 400,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.param = param
        self.code = code
        self.type = type or _TYPE_BY_STATUS.get(status_code, "server_error")


def not_supported(param: str, what: str | None = None) -> APIError:
    return APIError(
        f"'{param}' is not supported yet{': ' + what if what else ''}; remove it from the request",
        param=param,
        code="unsupported_parameter",
    )


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.message, exc.type, exc.param, exc.code), status_code=exc.status_code
    )


def _field_path(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    # Union members show up as loc parts ("str", "list[...]"); they name no field.
    parts = [p for p in parts if not (p[:1].isalpha() and ("[" in p or p in _TYPE_NAMES))]
    return ".".join(parts)


_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "function-after", "function-plain"}


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """A readable message for pydantic errors: 'field: what is wrong (got value)'."""
    lines, first_param = [], None
    seen: set[str] = set()
    for err in exc.errors():
        param = _field_path(tuple(err.get("loc", ())))
        if err.get("type") == "json_invalid":
            return "the request body is not valid JSON: " + err.get("msg", ""), None
        if err.get("type") == "missing" and param:
            text = f"'{param}' is required"
        elif err.get("type") == "extra_forbidden":
            text = f"unrecognized request argument '{param}'; remove it from the request"
        else:
            msg = err.get("msg", "invalid value").removeprefix("Value error, ")
            got = err.get("input")
            shown = repr(got) if not isinstance(got, dict | list) else type(got).__name__
            if len(shown) > 60:
                shown = shown[:57] + "..."
            text = f"'{param}': {msg} (got {shown})" if param else f"{msg}"
        if text in seen:
            continue
        seen.add(text)
        lines.append(text)
        first_param = first_param or param or None
    if not lines:
        return "invalid request", None
    more = f" (and {len(lines) - 3} more errors)" if len(lines) > 3 else ""
    return "; ".join(lines[:3]) + more, first_param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
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
