"""The upstream backend's chain: retries with backoff, fallback, and what is not retried.

The upstreams here are scripted httpx transports, to make each failure happen on cue; the
same backend against real glassbox processes (one stopped, then both) is in
tests/integration/backends/test_served.py."""

from __future__ import annotations

import json

import httpx
import pytest

from glassbox.backends.openai_upstream import (
    OpenAIUpstreamBackend,
    Upstream,
    UpstreamError,
    UpstreamRejected,
)

ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                 "finish_reason": "stop"}],
}  # fmt: skip
BODY = {"model": "front-name", "messages": [{"role": "user", "content": "hello"}]}


class Script:
    """Answers each request with the next of `steps` (a status, or an exception to raise),
    recording (host, body) of each."""

    def __init__(self, steps: dict[str, list], headers: dict[str, str] | None = None):
        self.steps = steps
        self.headers = headers or {}
        self.seen: list[tuple[str, dict]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.seen.append((host, json.loads(request.content)))
        step = self.steps[host].pop(0)
        if isinstance(step, Exception):
            raise step
        if step == 200:
            if json.loads(request.content).get("stream"):
                events = [{"choices": [{"index": 0, "delta": {"content": c}}]} for c in "hi"]
                text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
                return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})
            return httpx.Response(200, json=ANSWER)
        error = {"error": {"message": f"scripted {step}", "type": "x", "param": "messages"}}
        return httpx.Response(step, json=error, headers=self.headers)

    @property
    def hosts(self) -> list[str]:
        return [host for host, _ in self.seen]


def backend(script: Script, **kwargs) -> OpenAIUpstreamBackend:
    client = httpx.AsyncClient(transport=httpx.MockTransport(script))
    return OpenAIUpstreamBackend(
        "http://a/v1", "model-a", client=client, fallbacks=[Upstream("http://b/v1", "model-b")],
        backoff=0.001, **kwargs,
    )  # fmt: skip


async def test_a_failed_connection_is_retried_then_the_next_upstream_answers():
    refused = httpx.ConnectError("connection refused")
    script = Script({"a": [refused, refused, refused], "b": [200]})
    answer = await backend(script, retries=2).chat_completions(BODY)
    assert answer["choices"][0]["message"]["content"] == "hi"
    assert script.hosts == ["a", "a", "a", "b"]
    # each upstream gets its own name for the model
    assert [body["model"] for _, body in script.seen] == ["model-a"] * 3 + ["model-b"]


async def test_503_is_retried_on_the_same_upstream_until_it_answers():
    script = Script({"a": [503, 502, 200], "b": []})
    await backend(script, retries=2).chat_completions(BODY)
    assert script.hosts == ["a", "a", "a"]


async def test_retry_after_beyond_the_cap_moves_on_at_once():
    script = Script({"a": [429], "b": [200]}, headers={"retry-after": "3600"})
    await backend(script, retries=5).chat_completions(BODY)
    assert script.hosts == ["a", "b"]


async def test_a_misconfigured_upstream_is_skipped_without_retries():
    script = Script({"a": [404], "b": [200]})
    await backend(script, retries=3).chat_completions(BODY)
    assert script.hosts == ["a", "b"]


async def test_the_requests_own_fault_is_not_retried_nor_sent_elsewhere():
    script = Script({"a": [400], "b": [200]})
    with pytest.raises(UpstreamRejected, match="upstream error 400: scripted 400") as err:
        await backend(script, retries=3).chat_completions(BODY)
    assert script.hosts == ["a"] and err.value.param == "messages"


async def test_with_no_upstream_left_the_error_lists_each_failure():
    script = Script({"a": [500], "b": [httpx.ConnectError("refused")] * 2})
    with pytest.raises(UpstreamError) as err:
        await backend(script, retries=1).chat_completions(BODY)
    message = err.value.message
    assert "no upstream of model 'model-a' answered" in message
    assert "http://a/v1: upstream error 500: scripted 500" in message
    assert "http://b/v1: ConnectError: refused" in message


async def test_a_stream_falls_back_before_its_first_event():
    script = Script({"a": [httpx.ConnectError("refused")], "b": [200]})
    events = [e async for e in backend(script, retries=0).chat_completions_stream(BODY)]
    assert [e["choices"][0]["delta"]["content"] for e in events] == ["h", "i"]
    assert script.hosts == ["a", "b"] and script.seen[1][1]["stream"] is True
