"""glassbox's own engine as a backend: emotions steer the residual stream.

Emotion coefficients become a blend of named steering vectors (`SteeringVectors.blend`), a
`SteeringPlan` carried in the request's `SamplingParams`: the engine applies it to this
request's batch rows only. Without vectors the backend says so in the log and falls back to
sampling modulation, like the backends that cannot steer.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing

from glassbox.backends.base import DEFAULT_TEMPERATURE, DEFAULT_TOP_P, InferenceEngine, Message
from glassbox.engine.async_engine import AsyncLLMEngine
from glassbox.engine.sequence import STEERING_ABORT
from glassbox.features.vectors import SteeringVectors
from glassbox.requests.builder import EngineRequest, RequestBuilder

log = logging.getLogger(__name__)


class LocalBackend(InferenceEngine):
    SUPPORTS_STEERING = True
    MODULATION_TYPE = "steering"

    def __init__(
        self,
        engine: AsyncLLMEngine,
        vectors: SteeringVectors | None = None,
        strength: float = 1.0,
        temperature: float = DEFAULT_TEMPERATURE,
        top_p: float = DEFAULT_TOP_P,
    ):
        """`strength` scales every blend (coefficient x strength per vector). The engine is
        shared, not owned: `aclose` leaves it running."""
        super().__init__(temperature, top_p)
        self.engine = engine
        self.requests = RequestBuilder.for_engine(engine)
        self.vectors = vectors
        self.strength = strength

    async def chat_completion_stream(
        self,
        messages: list[Message],
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        emotion_coefficients: Mapping[str, float] | None = None,
    ) -> AsyncIterator[str]:
        request = self.request(messages, max_tokens, temperature, top_p, emotion_coefficients)
        async with aclosing(self.engine.submit(request.prompt_ids, request.params)) as outputs:
            async for out in outputs:
                if out.text:
                    yield out.text
                if out.finish_reason == STEERING_ABORT:
                    raise RuntimeError("the generation was stopped by a steering abort scope")

    def request(
        self,
        messages: list[Message],
        max_tokens: int | None,
        temperature: float | None,
        top_p: float | None,
        emotion_coefficients: Mapping[str, float] | None,
    ) -> EngineRequest:
        """The engine request: the chat-formatted prompt and the sampling parameters (with
        the steering plan), through the one request path."""
        prompt = self.requests.chat(list(messages))
        plan = None
        if emotion_coefficients and self.vectors is not None:
            plan = self.vectors.blend(emotion_coefficients, self.strength)
            temperature, top_p = self.sampling(temperature, top_p, None)
        else:
            if emotion_coefficients:
                log.warning(
                    "no steering vectors loaded: emotion coefficients fall back to sampling "
                    "modulation",
                    extra={"emotion_coefficients": dict(emotion_coefficients)},
                )
            temperature, top_p = self.sampling(temperature, top_p, emotion_coefficients)
        return self.requests.request(
            prompt,
            prompt_param="messages",
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            steering=plan,
        )
