"""HTTP plumbing for generation: SSE streams and client disconnects."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from contextlib import aclosing
from typing import TypeVar

from fastapi import Request, Response
from sse_starlette import EventSourceResponse

from glassbox.api.errors import domain_error_body
from glassbox.errors import GlassboxError
from glassbox.logs import get_logger

T = TypeVar("T")
_POLL_SECONDS = 0.2
CLIENT_CLOSED_REQUEST = 499  # nginx's code; nobody reads it, the access log does

log = get_logger(__name__)


async def _events(chunks: AsyncIterator[str]) -> AsyncIterator[dict[str, str]]:
    # Closing `chunks` (client gone: sse-starlette cancels us) aborts the sequences.
    async with aclosing(chunks) as it:
        try:
            async for data in it:
                yield {"data": data}
        except GlassboxError as exc:  # headers are sent: report in the stream, as OpenAI does
            yield {"data": json.dumps(domain_error_body(exc))}
            return
    yield {"data": "[DONE]"}


def sse_response(chunks: AsyncIterator[str]) -> EventSourceResponse:
    return EventSourceResponse(_events(chunks), sep="\n")


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
