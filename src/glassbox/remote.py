"""What the clients of remote OpenAI-compatible servers share (the upstream generation
backend, the remote embedding providers): which answers are worth another try, OpenAI's
error body read, `Retry-After` honoured, a transport failure named."""

from __future__ import annotations

import json
from typing import Any

import httpx

# Worth another try on the same server: a timeout, a rate limit, an overloaded or restarting
# server. Both generation and embedding may be asked again safely (nothing is stored).
RETRY_STATUS = frozenset({408, 429, 502, 503, 504})
# The request's own fault: every server would refuse it, so it is neither retried nor sent
# to another one.
CLIENT_FAULT = frozenset({400, 413, 422})
MAX_RETRY_AFTER = 10.0  # seconds; a server that asks for longer is given up on instead


class Retry(Exception):
    """A failure worth another try, after `delay` seconds (None: the backoff decides)."""

    def __init__(self, reason: str, delay: float | None = None):
        super().__init__(reason)
        self.reason, self.delay = reason, delay


def pooled_client(
    timeout: float, connect_timeout: float, max_connections: int
) -> httpx.AsyncClient:
    """One client whose connections are kept and reused across requests (and servers)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=connect_timeout),
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
    )


def error_field(text: str, name: str) -> Any:
    """A field of OpenAI's error body, `{"error": {"message", "type", "param", "code"}}`."""
    try:
        return json.loads(text)["error"][name]
    except (ValueError, LookupError, TypeError):
        return None


def error_message(status: int, text: str, label: str = "error") -> str:
    """ "<label> <status>: <the server's message>" (its body's start when it has none)."""
    message = error_field(text, "message")
    if not isinstance(message, str):
        message = text[:500]
    return f"{label} {status}: {message}"


def retry_after(response: httpx.Response) -> float | None:
    """The `Retry-After` seconds (None when absent or an HTTP date: the backoff decides)."""
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return None


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
