"""Any OpenAI-compatible server as a backend (vLLM, SGLang, llama.cpp's server, OpenAI,
another glassbox): POST /chat/completions and /completions over httpx, streamed as
server-sent events.

The upstream's activations are out of reach, so emotions modulate sampling (temperature,
top_p) and the coefficients are logged.

`response_format` and tools are sent to the upstream as they are (OpenAI's fields), which
enforces them: vLLM, SGLang, llama.cpp's server and glassbox all do. For a server that does
not, turn the flags off (`supports_json_schema=False`, `supports_tools=False`): then
`generate_model` puts the schema in the prompt and validates and retries, and
`function_call` offers the tools in glassbox's documented prompt format and parses the text.

Failures. A backend has a chain of upstreams (`base_url` first, then `fallbacks`), one pooled
client for all of them, and a request goes to the first that answers:

- a connection that cannot be made (refused, connect or pool timeout) or an answer of 408,
  429, 502, 503 or 504 is retried on the same upstream `retries` times, after `backoff` seconds
  doubled each time (or the upstream's `Retry-After`, up to `MAX_RETRY_AFTER`);
- any other failure (another 5xx, 401/403/404: the upstream is misconfigured; a read
  timeout or a broken connection) moves on to the next upstream at once;
- 400, 413 and 422 are the request's fault: every upstream would refuse it, so it is
  refused (`UpstreamRejected`, a 400 carrying the upstream's message);
- with no upstream left, `UpstreamError` (503) lists what each one answered.

A stream is committed once an upstream has answered with its headers: a failure after that
ends the stream with an error, as a broken stream from the upstream itself would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from glassbox.backends.base import (
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    InferenceEngine,
    Message,
    ResponseFormat,
    ToolSpec,
)
from glassbox.errors import InvalidRequest, Unavailable
from glassbox.remote import (
    CLIENT_FAULT,
    MAX_RETRY_AFTER,
    RETRY_STATUS,
    Retry,
    describe,
    error_field,
    error_message,
    pooled_client,
    retry_after,
)
from glassbox.structured.calls import (
    FunctionCall,
    choice_name,
    tools_from,
    validated,
    wire_choice,
    wire_tool,
)
from glassbox.structured.tools import ToolCall


class UpstreamError(Unavailable):
    """No upstream gave an answer, or one broke off its stream (503)."""

    default_code = "upstream_unavailable"


class UpstreamRejected(InvalidRequest):
    """An upstream refused the request itself (400, 413, 422): the client's to fix."""

    default_code = "upstream_rejected"


@dataclass(frozen=True)
class Upstream:
    base_url: str  # as the openai package takes it: "http://host:8000/v1"
    model: str  # the upstream's name for the model
    api_key: str | None = None

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key or 'none'}"}


class _Next(Exception):
    """This upstream failed; go on to the next one."""

    def __init__(self, reason: str):
        self.reason = reason


class OpenAIUpstreamBackend(InferenceEngine):
    SUPPORTS_STEERING = False
    MODULATION_TYPE = "sampling"
    SUPPORTS_JSON_SCHEMA = True
    SUPPORTS_TOOLS = True

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        temperature: float = DEFAULT_TEMPERATURE,
        top_p: float = DEFAULT_TOP_P,
        client: httpx.AsyncClient | None = None,
        supports_json_schema: bool = True,
        supports_tools: bool = True,
        *,
        fallbacks: Sequence[Upstream] = (),
        retries: int = 2,
        backoff: float = 0.25,
        connect_timeout: float = 5.0,
        max_connections: int = 64,
        served_name: str | None = None,
    ):
        """`base_url` as the `openai` package takes it, e.g. "http://host:8000/v1"; `model`
        the upstream's name for the model; `fallbacks` the upstreams tried after it, in
        order. A `client` passed in (for its transport, timeouts or event hooks) is not
        closed by `aclose`; otherwise one pooled client (at most `max_connections`, `timeout`
        seconds for an answer, `connect_timeout` to connect) serves every upstream. The
        `supports_*` flags say what the upstreams enforce (see the module's docstring);
        `served_name`, the model's name in error messages (default: `model`)."""
        super().__init__(temperature, top_p)
        self.SUPPORTS_JSON_SCHEMA = supports_json_schema
        self.SUPPORTS_TOOLS = supports_tools
        self.upstreams = [Upstream(base_url, model, api_key), *fallbacks]
        self.model = model
        self.served_name = served_name or model
        self.retries = retries
        self.backoff = backoff
        self._owns_client = client is None
        self.client = client or pooled_client(timeout, connect_timeout, max_connections)

    # --- the reference's interface ------------------------------------------------------

    async def chat_completion(
        self,
        messages: list[Message],
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        emotion_coefficients: Mapping[str, float] | None = None,
        *,
        response_format: ResponseFormat | None = None,
    ) -> str:
        body = self._body(
            messages, max_tokens, temperature, top_p, emotion_coefficients, response_format
        )
        return (await self._message(body)).get("content") or ""

    async def function_call(
        self,
        messages: list[Message],
        tools: list[ToolSpec],
        tool_choice: str | Mapping[str, Any] = "auto",
        *,
        parallel_tool_calls: bool = True,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        emotion_coefficients: Mapping[str, float] | None = None,
    ) -> list[FunctionCall]:
        """The upstream's own tool calls (OpenAI's `tools`, `tool_choice`,
        `parallel_tool_calls` sent; `tool_calls` read back), validated; without
        `SUPPORTS_TOOLS`, the documented prompt format (`InferenceEngine.function_call`)."""
        if not self.SUPPORTS_TOOLS:
            return await super().function_call(
                messages,
                tools,
                tool_choice,
                parallel_tool_calls=parallel_tool_calls,
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                emotion_coefficients=emotion_coefficients,
            )
        offered = tools_from(tools)
        choice = choice_name(tool_choice, offered)
        body = self._body(messages, max_tokens, temperature, top_p, emotion_coefficients)
        body["tools"] = [wire_tool(t) for t in offered]
        body["tool_choice"] = wire_choice(choice)
        body["parallel_tool_calls"] = parallel_tool_calls
        message = await self._message(body)
        try:
            calls = [
                ToolCall(c["id"], c["function"]["name"], c["function"].get("arguments") or "")
                for c in message.get("tool_calls") or []
            ]
        except (LookupError, TypeError, AttributeError) as exc:
            raise UpstreamError(f"the upstream's tool_calls are malformed: {exc}") from exc
        answer = json.dumps(message, ensure_ascii=False)
        return validated(calls, offered, choice, parallel_tool_calls, answer)

    async def chat_completion_stream(
        self,
        messages: list[Message],
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        emotion_coefficients: Mapping[str, float] | None = None,
        *,
        response_format: ResponseFormat | None = None,
    ) -> AsyncIterator[str]:
        body = self._body(
            messages, max_tokens, temperature, top_p, emotion_coefficients, response_format
        )
        async for event in self.chat_completions_stream(body):
            for choice in event.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    yield text

    # --- OpenAI's requests, relayed -----------------------------------------------------

    async def chat_completions(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._answer("/chat/completions", body, "a chat completion")

    def chat_completions_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return self._events("/chat/completions", body)

    async def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._answer("/completions", body, "a completion")

    def completions_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return self._events("/completions", body)

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    # --- the chain ----------------------------------------------------------------------

    async def _answer(self, path: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        response = await self._send(path, {**body, "stream": False})
        try:
            answer = response.json()
        except ValueError as exc:
            raise UpstreamError(f"{response.url}: the answer is not JSON: {exc}") from exc
        if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
            raise UpstreamError(f"{response.url}: the answer is not {what}")
        return answer

    async def _events(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        response = await self._send(path, {**body, "stream": True}, stream=True)
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    event = json.loads(data)
                except ValueError as exc:
                    raise UpstreamError(
                        f"{response.url} sent a malformed event: {data[:200]!r}"
                    ) from exc
                if not isinstance(event, dict):
                    raise UpstreamError(f"{response.url} sent a malformed event: {data[:200]!r}")
                if "error" in event:
                    raise UpstreamError(error_message(response.status_code, data, "upstream error"))
                yield event
        except httpx.HTTPError as exc:
            raise UpstreamError(f"{response.url} broke off its stream: {describe(exc)}") from exc
        finally:
            await response.aclose()

    async def _send(self, path: str, body: dict[str, Any], stream: bool = False) -> httpx.Response:
        """The first answer of the chain that is not a failure (streamed: headers read,
        body not yet)."""
        failures = []
        for upstream in self.upstreams:
            try:
                return await self._try(upstream, path, body, stream)
            except (Retry, _Next) as failure:
                failures.append(f"{upstream.base_url}: {failure.reason}")
        raise UpstreamError(
            f"no upstream of model '{self.served_name}' answered: " + "; ".join(failures)
        )

    async def _try(
        self, upstream: Upstream, path: str, body: dict[str, Any], stream: bool
    ) -> httpx.Response:
        """The upstream's answer, retried while it fails in a way worth retrying; `Retry`
        once the retries are spent, `_Next` for a failure not worth retrying."""
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return await self._once(upstream, path, body, stream)
            except Retry as failure:
                if attempt == self.retries:
                    raise
                wait = delay if failure.delay is None else failure.delay
                if wait > MAX_RETRY_AFTER:
                    raise _Next(f"{failure.reason}, retry after {wait:g} s") from None
                await asyncio.sleep(wait)
                delay *= 2
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _once(
        self, upstream: Upstream, path: str, body: dict[str, Any], stream: bool
    ) -> httpx.Response:
        request = self.client.build_request(
            "POST", upstream.url(path), json={**body, "model": upstream.model},
            headers=upstream.headers,
        )  # fmt: skip
        try:
            response = await self.client.send(request, stream=stream)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise Retry(describe(exc)) from exc
        except httpx.HTTPError as exc:
            raise _Next(describe(exc)) from exc
        if not response.is_error:
            return response
        text = (await response.aread()).decode(errors="replace")
        await response.aclose()
        status = response.status_code
        message = error_message(status, text, "upstream error")
        if status in CLIENT_FAULT:
            param = error_field(text, "param")
            raise UpstreamRejected(f"{upstream.base_url}: {message}", param=param)
        if status in RETRY_STATUS:
            raise Retry(message, retry_after(response))
        raise _Next(message)

    async def _message(self, body: dict[str, Any]) -> dict[str, Any]:
        """The message of the upstream's first choice to an unstreamed request."""
        answer = await self.chat_completions(body)
        try:
            message = answer["choices"][0]["message"]
        except (LookupError, TypeError) as exc:
            raise UpstreamError(f"the upstream's answer is not a chat completion: {exc}") from exc
        if not isinstance(message, dict):
            raise UpstreamError("the upstream's answer is not a chat completion: no message")
        return message

    def _body(
        self,
        messages: list[Message],
        max_tokens: int | None,
        temperature: float | None,
        top_p: float | None,
        emotion_coefficients: Mapping[str, float] | None,
        response_format: ResponseFormat | None = None,
    ) -> dict[str, Any]:
        temperature, top_p = self.sampling(temperature, top_p, emotion_coefficients)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": temperature,
            "top_p": top_p,
        }
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        fmt = self.json_format(response_format)
        if fmt is not None:
            body["response_format"] = fmt
        return body
