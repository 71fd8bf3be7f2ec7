"""Any OpenAI-compatible server as a backend (vLLM, SGLang, llama.cpp's server, another
glassbox): POST /chat/completions over httpx, streamed as server-sent events.

The upstream's activations are out of reach, so emotions modulate sampling (temperature,
top_p) and the coefficients are logged.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from glassbox.backends.base import DEFAULT_TEMPERATURE, DEFAULT_TOP_P, InferenceEngine, Message


class UpstreamError(RuntimeError):
    """The upstream answered with an error or with something that is not a completion."""


class OpenAIUpstreamBackend(InferenceEngine):
    SUPPORTS_STEERING = False
    MODULATION_TYPE = "sampling"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str = "none",
        timeout: float = 120.0,
        temperature: float = DEFAULT_TEMPERATURE,
        top_p: float = DEFAULT_TOP_P,
        client: httpx.AsyncClient | None = None,
    ):
        """`base_url` as the `openai` package takes it, e.g. "http://host:8000/v1". A
        `client` passed in (for its transport, timeouts or event hooks) is not closed by
        `aclose`; requests go to absolute URLs built from `base_url`."""
        super().__init__(temperature, top_p)
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
    ) -> str:
        body = self._body(messages, max_tokens, temperature, top_p, emotion_coefficients)
        response = await self.client.post(self.url, json=body, headers=self.headers)
        if response.is_error:
            raise UpstreamError(_error_message(response.status_code, response.text))
        try:
            return response.json()["choices"][0]["message"]["content"] or ""
        except (ValueError, LookupError, TypeError) as exc:
            raise UpstreamError(f"the upstream's answer is not a chat completion: {exc}") from exc

    async def chat_completion_stream(
        self,
        messages: list[Message],
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        emotion_coefficients: Mapping[str, float] | None = None,
    ) -> AsyncIterator[str]:
        body = self._body(messages, max_tokens, temperature, top_p, emotion_coefficients)
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

    def _body(
        self,
        messages: list[Message],
        max_tokens: int | None,
        temperature: float | None,
        top_p: float | None,
        emotion_coefficients: Mapping[str, float] | None,
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
        return body


def _error_message(status: int, text: str) -> str:
    try:
        message = json.loads(text)["error"]["message"]
    except (ValueError, LookupError, TypeError):
        message = text[:500]
    return f"upstream error {status}: {message}"
