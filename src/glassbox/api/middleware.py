"""Request context and the body size bound, as pure ASGI middleware (BaseHTTPMiddleware
would buffer streams).

Every response, errors included, carries X-Request-Id (the client's if it sent a sane one);
the id is bound to every log line of the request; one access line and the request metrics
are recorded when the response ends (for streams: when the stream ends). Bodies larger than
the settings allow are refused (413) before anything parses them.
"""

from __future__ import annotations

import json
import re
import time
import uuid

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
        with structlog.contextvars.bound_contextvars(request_id=request_id):
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
                    method=scope["method"],
                    path=scope["path"],
                    route=route,
                    status=status,
                    tenant=getattr(principal, "tenant", None),
                    duration_ms=round(seconds * 1000, 2),
                )

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


async def send_error(send: Send, status: int, body: dict) -> None:
    """An error response in OpenAI's shape, sent on the raw ASGI channel (for middleware that
    answers before the app, or after it failed)."""
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
