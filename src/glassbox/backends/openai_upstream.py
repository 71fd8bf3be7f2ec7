"""Any OpenAI-compatible server as a backend (vLLM, SGLang, llama.cpp's server, another
glassbox): POST /chat/completions over httpx, streamed as server-sent events.

The upstream's activations are out of reach, so emotions modulate sampling (temperature,
top_p) and the coefficients are logged.

`response_format` and tools are sent to the upstream as they are (OpenAI's fields), which
enforces them: vLLM, SGLang, llama.cpp's server and glassbox all do. For a server that does
not, turn the flags off (`supports_json_schema=False`, `supports_tools=False`): then
`generate_model` puts the schema in the prompt and validates and retries, and
`function_call` offers the tools in glassbox's documented prompt format and parses the text.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
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
from glassbox.structured.calls import (
    FunctionCall,
    choice_name,
    tools_from,
    validated,
    wire_choice,
    wire_tool,
)
from glassbox.structured.tools import ToolCall


class UpstreamError(RuntimeError):
    """The upstream answered with an error or with something that is not a completion."""


class OpenAIUpstreamBackend(InferenceEngine):
    SUPPORTS_STEERING = False
    MODULATION_TYPE = "sampling"
    SUPPORTS_JSON_SCHEMA = True
    SUPPORTS_TOOLS = True

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str = "none",
        timeout: float = 120.0,
        temperature: float = DEFAULT_TEMPERATURE,
        top_p: float = DEFAULT_TOP_P,
        client: httpx.AsyncClient | None = None,
        supports_json_schema: bool = True,
        supports_tools: bool = True,
    ):
        """`base_url` as the `openai` package takes it, e.g. "http://host:8000/v1". A
        `client` passed in (for its transport, timeouts or event hooks) is not closed by
        `aclose`; requests go to absolute URLs built from `base_url`. The `supports_*`
        flags say what the upstream enforces (see the module's docstring)."""
        super().__init__(temperature, top_p)
        self.SUPPORTS_JSON_SCHEMA = supports_json_schema
        self.SUPPORTS_TOOLS = supports_tools
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self._owns_client = client is None
        self.client = client or httpx.AsyncClient(timeout=timeout)

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
        body["stream"] = True
        async with self.client.stream("POST", self.url, json=body, headers=self.headers) as r:
            if r.is_error:
                raise UpstreamError(_error_message(r.status_code, (await r.aread()).decode()))
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    event = json.loads(data)
                except ValueError as exc:
                    raise UpstreamError(f"the upstream sent a malformed event: {data!r}") from exc
                if "error" in event:
                    raise UpstreamError(_error_message(r.status_code, data))
                for choice in event.get("choices", []):
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield text

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    async def _message(self, body: dict[str, Any]) -> dict[str, Any]:
        """The message of the upstream's first choice to an unstreamed request."""
        response = await self.client.post(self.url, json=body, headers=self.headers)
        if response.is_error:
            raise UpstreamError(_error_message(response.status_code, response.text))
        try:
            message = response.json()["choices"][0]["message"]
        except (ValueError, LookupError, TypeError) as exc:
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


def _error_message(status: int, text: str) -> str:
    try:
        message = json.loads(text)["error"]["message"]
    except (ValueError, LookupError, TypeError):
        message = text[:500]
    return f"upstream error {status}: {message}"
