"""The interface every inference backend implements (Elpis's `InferenceEngine`).

A backend turns chat messages into text, and takes `emotion_coefficients` (emotion name ->
weight, e.g. `EmotionalState.get_steering_coefficients()`) in one of two ways, which it
declares as class attributes:

- `MODULATION_TYPE = "steering"` (`SUPPORTS_STEERING = True`): it blends steering vectors by
  the coefficients and adds them to the residual stream (the local engine);
- `MODULATION_TYPE = "sampling"`: it cannot touch activations, so it logs the coefficients
  and maps them back to a valence/arousal state that shifts temperature and top_p
  (`modulate_sampling`; llama.cpp, OpenAI-compatible upstreams).

The server also relays OpenAI's own requests to a backend that is not the local engine
(`chat_completions`, `completions` and their streams): the body as the client sent it, with
glassbox's extensions taken out and `model` set to the backend's name, and the answer in
OpenAI's shape. Backends that can do that override them.

`max_tokens=None` means "until the model stops or the context ends"; `temperature` and
`top_p` default to the backend's own defaults (0.7 and 0.9 unless configured).

Structured answers, declared the same way (an instance may override them: an upstream's
support depends on the server behind it):

- `SUPPORTS_JSON_SCHEMA`: `chat_completion(..., response_format=...)` (OpenAI's shape,
  `json_object` or `json_schema`) is enforced while decoding; a backend without it refuses
  `response_format` (`glassbox.structured.outputs.generate_model` validates and retries
  there instead);
- `SUPPORTS_TOOLS`: `function_call` constrains the calls (local engine) or asks the
  upstream for native tool calls; without it the tools are offered in the documented prompt
  format (`glassbox.structured.tools`) and the calls parsed from the text. Either way the
  calls come back validated against their tools (`glassbox.structured.calls`).
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar, Literal

from glassbox.errors import InvalidRequest, NotCapable, Unsupported
from glassbox.features.emotion import EmotionalState
from glassbox.structured.calls import (
    FunctionCall,
    choice_name,
    template_messages,
    tools_from,
    validated,
    written_calls,
)
from glassbox.structured.tools import Tool, prompt_messages

log = logging.getLogger(__name__)

ModulationType = Literal["none", "sampling", "steering"]
Message = dict[str, Any]
ResponseFormat = Mapping[str, Any]  # OpenAI's: {"type": "json_schema", "json_schema": {...}}
ToolSpec = Tool | Mapping[str, Any]  # OpenAI's: {"type": "function", "function": {...}}

DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.9


class InferenceEngine(ABC):
    SUPPORTS_STEERING: ClassVar[bool] = False
    MODULATION_TYPE: ClassVar[ModulationType] = "none"
    SUPPORTS_JSON_SCHEMA: bool = False
    SUPPORTS_TOOLS: bool = False

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE, top_p: float = DEFAULT_TOP_P):
        self.default_temperature = temperature
        self.default_top_p = top_p

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
        """The assistant's reply to `messages` (by default: the whole stream, joined)."""
        stream = self.chat_completion_stream(
            messages,
            max_tokens,
            temperature,
            top_p,
            emotion_coefficients,
            response_format=response_format,
        )
        return "".join([piece async for piece in stream])

    @abstractmethod
    def chat_completion_stream(
        self,
        messages: list[Message],
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        emotion_coefficients: Mapping[str, float] | None = None,
        *,
        response_format: ResponseFormat | None = None,
    ) -> AsyncIterator[str]:
        """The reply as it is generated, in text pieces; closing the iterator early stops
        the generation. `response_format` is checked by `json_format`."""

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
        """The calls the model makes (none when `tool_choice` is "auto" and it answers in
        text), each with its arguments validated against its tool's parameters
        (`InvalidOutput` otherwise). `messages` in OpenAI's shape, earlier calls and `tool`
        results included.

        By default the tools are offered in the documented prompt format and the calls are
        read from the reply, unconstrained (`written_calls`); backends that can do better
        override this."""
        offered = tools_from(tools)
        choice = choice_name(tool_choice, offered)
        prompt = prompt_messages(template_messages(messages), offered, choice)
        text = await self.chat_completion(
            prompt, max_tokens, temperature, top_p, emotion_coefficients
        )
        return validated(written_calls(text), offered, choice, parallel_tool_calls, text)

    def json_format(self, response_format: ResponseFormat | None) -> dict[str, Any] | None:
        """The JSON constraint `response_format` asks for (None for none or "text"); refused
        when malformed, or when this backend cannot enforce it."""
        if response_format is None or response_format.get("type") == "text":
            return None
        kind = response_format.get("type")
        if kind not in ("json_object", "json_schema"):
            raise InvalidRequest(
                "response_format.type must be 'text', 'json_object' or 'json_schema'",
                param="response_format",
            )
        if kind == "json_schema" and not isinstance(response_format.get("json_schema"), Mapping):
            raise InvalidRequest(
                "a 'json_schema' response_format needs 'json_schema': {'name', 'schema'}",
                param="response_format",
            )
        if not self.SUPPORTS_JSON_SCHEMA:
            raise Unsupported(
                "response_format",
                f"{type(self).__name__} cannot constrain its output (SUPPORTS_JSON_SCHEMA is "
                "false); glassbox.structured.outputs.generate_model validates and retries",
            )
        return dict(response_format)

    async def chat_completions(self, body: dict[str, Any]) -> dict[str, Any]:
        """OpenAI's POST /chat/completions, unstreamed: the ChatCompletion as a dict."""
        raise self._cannot_relay()

    def chat_completions_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """OpenAI's POST /chat/completions with `stream`: the chunks as dicts (no [DONE]).
        Errors before the first chunk are raised; a failure later ends the iteration with
        the error raised."""
        raise self._cannot_relay()

    async def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        """OpenAI's POST /completions, unstreamed."""
        raise self._cannot_relay()

    def completions_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """OpenAI's POST /completions with `stream`: the chunks as dicts."""
        raise self._cannot_relay()

    def _cannot_relay(self) -> NotCapable:
        return NotCapable(f"{type(self).__name__} does not serve OpenAI requests", param="model")

    async def aclose(self) -> None:
        """Release what the backend owns (clients, models); a no-op by default."""
        return None

    def sampling(
        self,
        temperature: float | None,
        top_p: float | None,
        emotion_coefficients: Mapping[str, float] | None,
    ) -> tuple[float, float]:
        """(temperature, top_p): the request's or the defaults, modulated by the emotion
        coefficients when there are any (logged, as they are not used as vectors)."""
        temperature = self.default_temperature if temperature is None else temperature
        top_p = self.default_top_p if top_p is None else top_p
        if not emotion_coefficients:
            return temperature, top_p
        modulated = modulate_sampling(emotion_coefficients, temperature, top_p)
        log.info(
            "emotion coefficients applied as sampling modulation",
            extra={
                "backend": type(self).__name__,
                "emotion_coefficients": dict(emotion_coefficients),
                "temperature": modulated[0],
                "top_p": modulated[1],
            },
        )
        return modulated


def state_from_coefficients(coefficients: Mapping[str, float]) -> EmotionalState:
    """The valence/arousal point a blend of the quadrant emotions stands for:
    valence = (excited + calm) - (frustrated + depleted),
    arousal = (excited + frustrated) - (calm + depleted), each clipped to [-1, 1].
    The exact inverse of `EmotionalState.get_steering_coefficients` (whose weights give
    2u - 1 = valence and 2w - 1 = arousal); other names are ignored."""
    c = {}
    for name in ("excited", "calm", "frustrated", "depleted"):
        value = coefficients.get(name, 0.0)
        if not math.isfinite(value):
            raise ValueError(f"emotion coefficient {name!r} must be finite, got {value!r}")
        c[name] = float(value)
    valence = (c["excited"] + c["calm"]) - (c["frustrated"] + c["depleted"])
    arousal = (c["excited"] + c["frustrated"]) - (c["calm"] + c["depleted"])
    return EmotionalState(_unit(valence), _unit(arousal))


def modulate_sampling(
    coefficients: Mapping[str, float], temperature: float, top_p: float
) -> tuple[float, float]:
    """Emotion coefficients as a temperature/top_p modulation (see steering/emotion.py)."""
    return state_from_coefficients(coefficients).get_sampling_params(temperature, top_p)


def _unit(x: float) -> float:
    return min(max(x, -1.0), 1.0)
