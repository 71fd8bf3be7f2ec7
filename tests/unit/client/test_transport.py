"""glassbox.client over a mock transport: what a live server rarely sends (an error inside an
SSE stream, a proxy's non-JSON error page) and the API key header."""

from __future__ import annotations

import json

import httpx
import pytest

from glassbox.client import Client, GlassboxError, NotFoundError


def sse(*events: dict | str) -> str:
    return "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events)


async def test_an_error_inside_a_stream_is_raised_after_the_tokens_before_it() -> None:
    error = {"error": {"message": "busy", "type": "service_unavailable_error", "param": None,
                       "code": None}}  # fmt: skip
    body = sse({"index": 0, "token_id": 5, "token": "a", "text": "a"}, error, "[DONE]")

    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["stream"] is True
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    events = []
    async with Client("http://test", transport=httpx.MockTransport(handler)) as c:
        with pytest.raises(GlassboxError) as info:
            async for event in c.stream("s1"):
                events.append(event)
    assert [e["token_id"] for e in events] == [5]
    assert info.value.status == 503 and info.value.message == "busy"


async def test_errors_without_the_openai_body_keep_status_and_text() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        status = 404 if request.url.path.endswith("/gone") else 502
        return httpx.Response(status, text="bad gateway")

    async with Client("http://test", transport=httpx.MockTransport(handler)) as c:
        with pytest.raises(GlassboxError) as info:
            await c.get_state("x")
        assert info.value.status == 502 and info.value.message == "bad gateway"
        assert info.value.code is None and not isinstance(info.value, NotFoundError)
        with pytest.raises(NotFoundError):
            await c.get_state("gone")


async def test_the_api_key_is_sent_as_a_bearer_token() -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"id": "s1"})

    async with Client("http://test/", api_key="k1", transport=httpx.MockTransport(handler)) as c:
        assert await c.get_state("s1") == {"id": "s1"}
    async with Client("http://test", transport=httpx.MockTransport(handler)) as c:
        await c.get_state("s1")
    assert seen == ["Bearer k1", None]
