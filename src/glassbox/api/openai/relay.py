"""OpenAI requests for a model that another backend serves (an OpenAI-compatible upstream,
llama.cpp): the body goes to the backend as the client sent it, and its answer comes back
as the backend gave it, under the name the client asked for.

glassbox's own fields are settled here, since the backend would not know them: a variant
(`variant`, `session_id` + `variant_id`) and a feature `readout` need the model's activations
and are refused with a 400 naming the backend and the capability; `emotion_coefficients` and
`emotional_state` become sampling modulation (`InferenceEngine.sampling`: temperature and
top_p, as the backend's `MODULATION_TYPE = "sampling"` says). Everything else
(response_format, tools, logprobs, n, seed, vLLM's guided_* fields) is the backend's to
honour or refuse.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any

from glassbox.api.openai.schemas import ChatCompletionRequest, CompletionRequest
from glassbox.backends.base import InferenceEngine
from glassbox.features.emotion import EmotionalState
from glassbox.requests.registry import FEATURES, STEERING, ModelRegistry, ServedModel

STEERING_FIELDS = ("variant", "session_id", "variant_id")
EMOTION_FIELDS = ("emotion_coefficients", "emotional_state")


class RelayService:
    def __init__(self, models: ModelRegistry, backends: Mapping[str, InferenceEngine]):
        """`backends`: the backend of every served model that is not the local one, by its
        served name."""
        self.models = models
        self.backends = backends

    async def chat(self, req: ChatCompletionRequest, model: ServedModel, name: str) -> dict:
        backend, body = self._prepare(req, model)
        return _named(await backend.chat_completions(body), name)

    async def chat_stream(
        self, req: ChatCompletionRequest, model: ServedModel, name: str
    ) -> AsyncIterator[str]:
        backend, body = self._prepare(req, model)
        return await _primed(backend.chat_completions_stream(body), name)

    async def completion(self, req: CompletionRequest, model: ServedModel, name: str) -> dict:
        backend, body = self._prepare(req, model)
        return _named(await backend.completions(body), name)

    async def completion_stream(
        self, req: CompletionRequest, model: ServedModel, name: str
    ) -> AsyncIterator[str]:
        backend, body = self._prepare(req, model)
        return await _primed(backend.completions_stream(body), name)

    def _prepare(
        self, req: ChatCompletionRequest | CompletionRequest, model: ServedModel
    ) -> tuple[InferenceEngine, dict[str, Any]]:
        """The backend, and the body it gets: the fields the client set, glassbox's own
        settled (see the module's docstring)."""
        for name in STEERING_FIELDS:
            if getattr(req, name) is not None:
                self.models.require(model.name, STEERING, param=name)
        if getattr(req, "readout", None) is not None:  # a feature readout reads activations
            self.models.require(model.name, FEATURES, param="readout")
        backend = self.backends[model.name]
        body = req.model_dump(mode="json", exclude_unset=True, by_alias=True)
        for name in (*STEERING_FIELDS, *EMOTION_FIELDS, "stream"):
            body.pop(name, None)
        body["model"] = model.name
        coefficients = req.emotion_coefficients
        if req.emotional_state is not None:
            state = EmotionalState(req.emotional_state.valence, req.emotional_state.arousal)
            coefficients = state.get_steering_coefficients()
        if coefficients:
            body["temperature"], body["top_p"] = backend.sampling(
                req.temperature, req.top_p, coefficients
            )
        return backend, body


def _named(answer: dict[str, Any], name: str) -> dict[str, Any]:
    """The answer under the name the client used (the upstream knows its own name)."""
    return {**answer, "model": name}


async def _primed(events: AsyncIterator[dict[str, Any]], name: str) -> AsyncIterator[str]:
    """The stream, with its first event already received: a backend that cannot answer
    fails here, as an HTTP error, rather than inside a stream that has begun."""
    first = await anext(aiter(events), None)

    async def chunks() -> AsyncIterator[str]:
        async with aclosing(events) as rest:
            if first is None:
                return
            yield json.dumps(_named(first, name), ensure_ascii=False)
            async for event in rest:
                yield json.dumps(_named(event, name), ensure_ascii=False)

    return chunks()
