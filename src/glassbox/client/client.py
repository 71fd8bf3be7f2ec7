"""An async client for glassbox's KV states, generation from them, and state analysis.

Responses are the server's JSON as plain dicts (see the API schemas for their fields);
failures raise `GlassboxError` (`NotFoundError` for 404).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Literal, Self

import httpx

from glassbox.client.errors import error_from_body, error_from_response

JSON = dict[str, Any]

# An error sent inside an SSE stream (the headers, and so the status, are already sent)
# carries only its OpenAI type; this gives it back the status it stands for.
_STATUS_BY_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "conflict_error": 409,
    "rate_limit_error": 429,
    "service_unavailable_error": 503,
}


def _body(**fields: Any) -> JSON:
    """The request body: the given fields without those left as None (server defaults)."""
    return {k: v for k, v in fields.items() if v is not None}


class Client:
    """`async with Client("http://127.0.0.1:8000") as c: state = await c.create_state(...)`

    `transport`: an httpx transport to use instead of the network (e.g. a MockTransport).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await self._http.request(method, path, **kwargs)
        if response.is_error:
            raise error_from_response(response)
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> JSON:
        return (await self._request(method, path, **kwargs)).json()

    # --- states -------------------------------------------------------------------------

    async def create_state(
        self,
        text: str | None = None,
        messages: list[JSON] | None = None,
        config: JSON | None = None,
        model_id: str | None = None,
    ) -> JSON:
        """A state from `text` or chat `messages` (exactly one); `config` holds the
        sampling defaults of generations from it (temperature, top_p, seed)."""
        body = _body(text=text, messages=messages, config=config, model_id=model_id)
        return await self._json("POST", "/states", json=body)

    async def get_state(self, state_id: str) -> JSON:
        return await self._json("GET", f"/states/{state_id}")

    async def list_states(
        self, limit: int = 20, after: str | None = None, parent_id: str | None = None
    ) -> JSON:
        """One page: {"data": [summaries], "has_more", "last_id"}; pass `last_id` as
        `after` for the next page (or use `iter_states`)."""
        params = _body(limit=limit, after=after, parent_id=parent_id)
        return await self._json("GET", "/states", params=params)

    async def iter_states(
        self, parent_id: str | None = None, page_size: int = 100
    ) -> AsyncIterator[JSON]:
        """Every state's summary (or every child of `parent_id`), page by page."""
        after = None
        while True:
            page = await self.list_states(page_size, after, parent_id)
            for summary in page["data"]:
                yield summary
            if not page["has_more"]:
                return
            after = page["last_id"]

    async def delete_state(self, state_id: str) -> JSON:
        return await self._json("DELETE", f"/states/{state_id}")

    async def fork_state(self, state_id: str, token_index: int | None = None) -> JSON:
        """A child sharing the state's KV (its first `token_index` tokens, default all)."""
        body = _body(token_index=token_index)
        return await self._json("POST", f"/states/{state_id}/fork", json=body)

    async def rollback(
        self, state_id: str, token_index: int | None = None, checkpoint: str | None = None
    ) -> JSON:
        """Truncate the state in place to `token_index` tokens or to a checkpoint."""
        body = _body(token_index=token_index, checkpoint=checkpoint)
        return await self._json("POST", f"/states/{state_id}/rollback", json=body)

    async def add_checkpoint(
        self, state_id: str, name: str, token_index: int | None = None
    ) -> JSON:
        body = _body(name=name, token_index=token_index)
        return await self._json("POST", f"/states/{state_id}/checkpoints", json=body)

    async def history(self, state_id: str) -> list[JSON]:
        """The state's summary and its ancestors', nearest first."""
        return (await self._json("GET", f"/states/{state_id}/history"))["data"]

    async def diff(self, state_id: str, other_id: str) -> JSON:
        return await self._json("GET", f"/states/{state_id}/diff/{other_id}")

    async def merge(self, state_ids: list[str]) -> JSON:
        return await self._json("POST", "/states/merge", json={"state_ids": state_ids})

    async def export_state(self, state_id: str, name: str | None = None) -> JSON:
        """Write the state to a file in the server's export directory: {"name", "bytes"}."""
        return await self._json("POST", f"/states/{state_id}/export", json=_body(name=name))

    async def list_exports(self) -> list[JSON]:
        """The files in the server's export directory: [{"name", "bytes"}]."""
        return (await self._json("GET", "/states/exports"))["data"]

    async def delete_export(self, name: str) -> None:
        await self._request("DELETE", f"/states/exports/{name}")

    async def download_state(self, state_id: str) -> bytes:
        """The state file's bytes (for `import_state(data=...)`, here or on another server)."""
        return (await self._request("GET", f"/states/{state_id}/export")).content

    async def import_state(self, name: str | None = None, data: bytes | None = None) -> JSON:
        """A new state from an exported file's `name` or from downloaded `data`."""
        if (name is None) == (data is None):
            raise ValueError("give exactly one of 'name' and 'data'")
        if name is not None:
            return await self._json("POST", "/states/import", json={"name": name})
        headers = {"content-type": "application/octet-stream"}
        return await self._json("POST", "/states/import", content=data, headers=headers)

    # --- generation ---------------------------------------------------------------------

    async def generate(
        self,
        state_id: str,
        max_tokens: int = 16,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop_sequences: list[str] | None = None,
        commit: bool = False,
        logprobs: int | None = None,
        variant: JSON | None = None,
    ) -> JSON:
        """Continue the state: {"text", "tokens", "finish_reason", "child_state_id",
        "usage"}. Unset sampling values come from the state's config; `commit` stores
        prompt + output as a child state; `variant` is an inline (Ember JSON) variant."""
        body = _body(
            state_id=state_id,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop_sequences=stop_sequences,
            commit=commit,
            logprobs=logprobs,
            variant=variant,
            stream=False,
        )
        return await self._json("POST", "/generate/token", json=body)

    async def stream(
        self,
        state_id: str,
        max_tokens: int = 16,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop_sequences: list[str] | None = None,
        commit: bool = False,
        logprobs: int | None = None,
        variant: JSON | None = None,
    ) -> AsyncIterator[JSON]:
        """`generate` as it happens: one event per token ({"index", "token_id", "token",
        "text"}, with "logprob"/"top_logprobs" when asked), then a last event with
        "finish_reason", "child_state_id" and "usage"."""
        body = _body(
            state_id=state_id,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop_sequences=stop_sequences,
            commit=commit,
            logprobs=logprobs,
            variant=variant,
            stream=True,
        )
        async with self._http.stream("POST", "/generate/token", json=body) as response:
            if response.is_error:
                await response.aread()
                raise error_from_response(response)
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                event = json.loads(data)
                if "error" in event:
                    err_type = event["error"].get("type")
                    raise error_from_body(_STATUS_BY_TYPE.get(err_type, 500), event, data)
                yield event

    async def beam(
        self,
        state_id: str,
        num_beams: int = 4,
        max_length: int = 16,
        length_penalty: float = 1.0,
        num_beam_groups: int = 1,
        diversity_penalty: float = 0.0,
        no_repeat_ngram_size: int = 0,
        early_stopping: bool | Literal["never"] = False,
        num_return_sequences: int = 1,
        commit: bool = False,
        variant: JSON | None = None,
    ) -> JSON:
        """Beam search from the state (Hugging Face `generate(num_beams=...)` semantics):
        {"beams": [{"text", "token_ids", "score", "finish_reason", "group"}] best first,
        "child_state_id", "usage"}. `max_length` counts new tokens only; `commit` stores
        the best beam as a child state."""
        body = _body(
            state_id=state_id,
            num_beams=num_beams,
            max_length=max_length,
            length_penalty=length_penalty,
            num_beam_groups=num_beam_groups,
            diversity_penalty=diversity_penalty,
            no_repeat_ngram_size=no_repeat_ngram_size,
            early_stopping=early_stopping,
            num_return_sequences=num_return_sequences,
            commit=commit,
            variant=variant,
        )
        return await self._json("POST", "/generate/beam", json=body)

    # --- analysis -----------------------------------------------------------------------

    async def token_analysis(self, state_id: str, top_k: int = 5) -> JSON:
        """Per token (from the second on): logprob, rank, entropy and the `top_k`
        alternatives; with the mean logprob and perplexity of the whole state."""
        return await self._json("GET", f"/analysis/tokens/{state_id}", params={"top_k": top_k})

    async def attention(
        self,
        state_id: str,
        layer: int,
        head: int | None = None,
        threshold: float = 0.0,
        normalized: bool = False,
    ) -> JSON:
        """Attention weights [query][key] at `layer` (one `head`, or the mean of all)."""
        body = _body(
            layer=layer, head=head, threshold=threshold, normalized=normalized, format="json"
        )
        return await self._json("POST", f"/analysis/attention/{state_id}", json=body)

    async def attention_png(
        self,
        state_id: str,
        layer: int,
        head: int | None = None,
        threshold: float = 0.0,
        normalized: bool = False,
    ) -> bytes:
        """The same weights as a PNG heatmap."""
        body = _body(
            layer=layer, head=head, threshold=threshold, normalized=normalized, format="png"
        )
        return (await self._request("POST", f"/analysis/attention/{state_id}", json=body)).content

    async def cache_analysis(
        self, state_id: str, layer_range: tuple[int, int] | None = None
    ) -> JSON:
        """A summary of the state's KV per layer in [start, end) (default: every layer)."""
        body = _body(layer_range=list(layer_range) if layer_range else None)
        return await self._json("POST", f"/analysis/cache/{state_id}", json=body)
