"""Errors of the Python client, parsed from the server's OpenAI-shaped error body."""

from __future__ import annotations

from typing import Any

import httpx


class GlassboxError(Exception):
    """A request the server refused or failed: its HTTP status and the fields of
    `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
    ):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type


class NotFoundError(GlassboxError):
    """404: no such state (or model, route, file)."""


def error_from_body(status: int, body: Any, fallback: str) -> GlassboxError:
    """The error of a status and a decoded body; `fallback` is the message when the body is
    not OpenAI's error shape (a proxy's page, an empty body)."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        err = {"message": fallback or f"HTTP {status}"}
    cls = NotFoundError if status == 404 else GlassboxError
    return cls(
        status,
        str(err.get("message") or fallback or f"HTTP {status}"),
        code=err.get("code"),
        param=err.get("param"),
        type=err.get("type"),
    )


def error_from_response(response: httpx.Response) -> GlassboxError:
    try:
        body = response.json()
    except ValueError:
        body = None
    return error_from_body(response.status_code, body, response.text.strip())
