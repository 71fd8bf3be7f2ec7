"""Request context and the body size bound, as pure ASGI middleware (BaseHTTPMiddleware
would buffer streams).

Every response, errors included, carries X-Request-Id (the client's if it sent a sane one);
the id is bound to every log line of the request; one access line and the request metrics
are recorded when the response ends (for streams: when the stream ends); with tracing on
(glassbox/tracing.py) the request is a server span. Bodies larger than
the settings allow are refused (413) before anything parses them.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid

import pydantic_core
import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from glassbox import tracing
from glassbox.api.errors import error_body
from glassbox.logs import get_logger
from glassbox.metrics import Metrics

REQUEST_ID_HEADER = "x-request-id"
_SANE_ID = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")

log = get_logger("glassbox.access")


def _request_id(scope: Scope) -> str:
    for key, value in scope.get("headers", ()):
        if key == b"x-request-id":
            text = value.decode("latin-1").strip()
            if _SANE_ID.match(text):
                return text
    return uuid.uuid4().hex


def _route_of(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        t0 = time.perf_counter()
        method, headers = scope["method"], scope.get("headers", ())
        with (
            structlog.contextvars.bound_contextvars(request_id=request_id),
            tracing.http_span(method, scope["path"], headers) as span,  # None: tracing off
        ):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                log.exception("unhandled error")
                if not started:
                    await self._internal_error(send_with_id, request_id)
            finally:
                seconds = time.perf_counter() - t0
                route = _route_of(scope)
                self.metrics.observe_request(route, status, seconds)
                principal = scope["state"].get("principal")  # set once a key is verified
                log.info(
                    "request",
                    method=method,
                    path=scope["path"],
                    route=route,
                    status=status,
                    tenant=getattr(principal, "tenant", None),
                    duration_ms=round(seconds * 1000, 2),
                )
                if span is not None:
                    tracing.end_http(span, method, route, status, request_id)

    @staticmethod
    async def _internal_error(send: Send, request_id: str) -> None:
        message = f"internal server error; quote request id {request_id} when reporting it"
        await send_error(send, 500, error_body(message, "server_error"))


# Routes that take files as bodies and bound them themselves (/v1/files by the file service's
# limit; /states/import by the size a state of the model can have).
OWN_BODY_LIMITS = ("/v1/files", "/states/import")


class BodySizeLimitMiddleware:
    """Refuses a request body larger than `max_bytes` with 413 before any of it is parsed: by
    its Content-Length when it says so, else (chunked bodies, or a Content-Length that lies) by
    counting the bytes as they arrive. The app then sees the client disconnect, and whatever
    it answers is dropped: the 413 has been sent."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(OWN_BODY_LIMITS):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        started = refused = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    if not started:
                        await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counting_receive, guarded_send)

    async def _refuse(self, send: Send) -> None:
        await send_error(
            send,
            413,
            error_body(
                f"the request body is larger than {self.max_bytes} bytes, the most this server "
                "accepts (GLASSBOX_MAX_BODY_BYTES); send less",
                "invalid_request_error",
                code="request_too_large",
            ),
        )


# The deepest nesting a JSON body may have: that of the strict parser (jiter's limit).
MAX_JSON_DEPTH = 200


class StrictJSONMiddleware:
    """Reads every JSON body with the strict parser pydantic uses (jiter) before the app does,
    and refuses (400) what is not JSON a client can mean. FastAPI reads bodies with Python's
    json module, which takes NaN and Infinity, 1e400 (as inf), unpaired UTF-16 surrogates
    (strings that then cannot be encoded: to the database, the tokenizer, or back to the
    client in an error message) and nests until it raises RecursionError. A body without a
    content type is JSON to FastAPI too, except on the routes that take raw bytes. A string
    holding NUL (U+0000) is refused too: PostgreSQL cannot store it in text, and no prompt,
    name or id needs it."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _json_body(scope):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # gone (or refused as too large): no answer
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        problem = json_problem(body) if body.strip() else None
        if problem is not None:
            await send_error(send, 400, error_body(problem, "invalid_request_error",
                                                   code="invalid_json"))  # fmt: skip
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: the disconnect, when it comes
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _json_body(scope: Scope) -> bool:
    content_type = dict(scope.get("headers", ())).get(b"content-type")
    if content_type is None:
        return scope["method"] != "GET" and not scope["path"].startswith(OWN_BODY_LIMITS)
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


def json_problem(body: bytes) -> str | None:
    """What is wrong with a JSON body, said so that the client can fix it; None: nothing."""
    try:
        value = pydantic_core.from_json(body, allow_inf_nan=False)
    except ValueError as exc:
        text = str(exc)
        if "recursion limit" in text:
            return f"the request body nests deeper than {MAX_JSON_DEPTH} levels; flatten it"
        hint = ""
        if "surrogate" in text or "hex escape" in text:
            hint = " (a string holds half of a UTF-16 surrogate pair; send whole characters)"
        elif "expected value" in text:
            hint = " (NaN and Infinity are not JSON numbers)"
        return f"the request body is not valid JSON: {text}{hint}"
    nul = b"\\u0000" in body  # the only way JSON spells NUL (or an escaped backslash + u0000)
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and math.isinf(item):
            return (
                "the request body holds a number beyond the range of a double (such as 1e400); "
                "send a finite number"
            )
        if nul and isinstance(item, str) and "\x00" in item:
            return "a string in the request body holds NUL (\\u0000); remove it"
        if isinstance(item, dict):
            stack.extend(item.values())
            if nul:
                stack.extend(item.keys())
        elif isinstance(item, list):
            stack.extend(item)
    return None


async def send_error(send: Send, status: int, body: dict) -> None:
    """An error response in OpenAI's shape, sent on the raw ASGI channel (for middleware that
    answers before the app, or after it failed)."""
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
