"""HTTP plumbing for generation: SSE streams and client disconnects."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from contextlib import aclosing
from typing import TypeVar

import anyio
from fastapi import Request, Response
from sse_starlette import EventSourceResponse

from glassbox.api.errors import domain_error_body
from glassbox.errors import GlassboxError, Unavailable
from glassbox.logs import get_logger

T = TypeVar("T")
_POLL_SECONDS = 0.2
CLIENT_CLOSED_REQUEST = 499  # nginx's code; nobody reads it, the access log does

log = get_logger(__name__)


# Seconds before the end of the shutdown grace at which streams still running are told
# the server is stopping: sse-starlette notices within 0.5 s (its watcher's poll), and the
# stream then gets this long to send its error event before it is cancelled.
FAREWELL_SECONDS = 1.0


async def _events(
    chunks: AsyncIterator[str], shutdown: anyio.Event
) -> AsyncIterator[dict[str, str]]:
    """The SSE events of `chunks`, then [DONE]. A domain error ends the stream with its error
    body (headers are sent: it is reported in the stream, as OpenAI does); so does `shutdown`
    (the server's grace is running out), which also ends the generation. Closing `chunks`
    (the client left: sse-starlette cancels us) aborts the sequences."""
    stopping = asyncio.ensure_future(shutdown.wait())
    async with aclosing(chunks) as it:
        step: asyncio.Future[str] | None = None
        try:
            while True:
                step = asyncio.ensure_future(anext(it))
                await asyncio.wait({step, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    log.info("stream ended: the server is shutting down")
                    stopped = Unavailable(
                        "the server is shutting down; the generation was stopped, retry it",
                        code="server_shutting_down",
                    )
                    yield {"data": json.dumps(domain_error_body(stopped))}
                    return
                try:
                    data = step.result()
                except StopAsyncIteration:
                    break
                yield {"data": data}
        except GlassboxError as exc:
            yield {"data": json.dumps(domain_error_body(exc))}
            return
        finally:
            stopping.cancel()
            if step is not None and not step.done():
                step.cancel()  # before `it` is closed: it cannot close while running
                await asyncio.wait({step})
    yield {"data": "[DONE]"}


def sse_response(chunks: AsyncIterator[str]) -> EventSourceResponse:
    shutdown = anyio.Event()
    return EventSourceResponse(
        _events(chunks, shutdown),
        sep="\n",
        shutdown_event=shutdown,
        shutdown_grace_period=FAREWELL_SECONDS,
    )


async def until_disconnected(request: Request, work: Awaitable[T]) -> T | Response:
    """Await `work`, cancelling it (and so aborting its sequences) if the client goes away."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_POLL_SECONDS)
            if done:
                return task.result()
            if await request.is_disconnected():
                log.info("client disconnected; generation cancelled")
                return Response(status_code=CLIENT_CLOSED_REQUEST)
    finally:
        task.cancel()
