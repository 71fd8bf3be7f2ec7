"""glassbox's own engine as a backend: emotions steer the residual stream.

Emotion coefficients become a blend of named steering vectors (`SteeringVectors.blend`), a
`SteeringPlan` carried in the request's `SamplingParams`: the engine applies it to this
request's batch rows only. Without vectors the backend says so in the log and falls back to
sampling modulation, like the backends that cannot steer.

Structured answers are constrained while decoding: a `response_format` and the tool calls of
`function_call` become grammars (`GrammarCompiler`, compiled on a worker thread and cached)
carried in the request's `SamplingParams` like the steering plan. Tools, earlier calls and
`tool` results reach the model as the server's routes send them: through its chat template
where the template takes tools, else in glassbox's documented format
(`structured.tools.conversation`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any

from glassbox.backends.base import (
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    InferenceEngine,
    Message,
    ResponseFormat,
    ToolSpec,
)
from glassbox.engine.async_engine import AsyncLLMEngine
from glassbox.engine.grammar import Grammar
from glassbox.engine.llm_engine import StepOutput
from glassbox.engine.sequence import STEERING_ABORT
from glassbox.errors import InvalidOutput
from glassbox.features.vectors import SteeringVectors
from glassbox.requests.builder import EngineRequest, RequestBuilder
from glassbox.structured import tools as tool_format
from glassbox.structured.calls import (
    FunctionCall,
    choice_name,
    template_messages,
    tools_from,
    validated,
)
from glassbox.structured.grammar import GrammarCompiler
from glassbox.structured.tools import OPEN, Tool, ToolChoice

log = logging.getLogger(__name__)


class LocalBackend(InferenceEngine):
    SUPPORTS_STEERING = True
    MODULATION_TYPE = "steering"
    SUPPORTS_JSON_SCHEMA = True
    SUPPORTS_TOOLS = True

    def __init__(
        self,
        engine: AsyncLLMEngine,
        vectors: SteeringVectors | None = None,
        strength: float = 1.0,
        temperature: float = DEFAULT_TEMPERATURE,
        top_p: float = DEFAULT_TOP_P,
        grammars: GrammarCompiler | None = None,
    ):
        """`strength` scales every blend (coefficient x strength per vector). The engine is
        shared, not owned: `aclose` leaves it running. `grammars`: the compiler (and its
        cache) to share, e.g. the server's; by default one of the backend's own."""
        super().__init__(temperature, top_p)
        self.engine = engine
        self.requests = RequestBuilder.for_engine(engine)
        self.vectors = vectors
        self.strength = strength
        self.grammars = grammars or GrammarCompiler(engine.tokenizer, engine.vocab_size)

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
        grammar = await self.format_grammar(response_format)
        request = self.request(
            messages, max_tokens, temperature, top_p, emotion_coefficients, grammar=grammar
        )
        async for out in self._outputs(request):
            if out.text:
                yield out.text

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
        """The calls, constrained while decoding: only the offered tools, with arguments
        that follow their parameter schemas (text instead, with "auto", if the model
        chooses)."""
        offered = tools_from(tools)
        choice = choice_name(tool_choice, offered)
        grammar = await asyncio.to_thread(
            tool_format.compile_grammar, self.grammars, offered, choice, parallel_tool_calls
        )
        request = self.request(
            messages,
            max_tokens,
            temperature,
            top_p,
            emotion_coefficients,
            grammar=grammar,
            tools=offered,
            tool_choice=choice,
        )
        pieces, reason = [], None
        async for out in self._outputs(request):
            pieces.append(out.text)
            reason = out.finish_reason
        text = "".join(pieces)
        # Under the grammar an answer that starts like a call is calls (text may not).
        if reason == "length" and (text.startswith(OPEN) or OPEN.startswith(text)):
            raise InvalidOutput(
                f"the model's tool calls reached max_tokens ({request.params.max_tokens}) "
                "before they were complete; allow more tokens",
                output=text,
            )
        _, calls = tool_format.parse(text)
        return validated(calls, offered, choice, parallel_tool_calls, text)

    async def format_grammar(self, response_format: ResponseFormat | None) -> Grammar | None:
        """The compiled grammar of a `response_format` (None for none or "text")."""
        fmt = self.json_format(response_format)
        return await asyncio.to_thread(self.grammars.response_format, fmt)

    async def _outputs(self, request: EngineRequest) -> AsyncIterator[StepOutput]:
        async with aclosing(self.engine.submit(request.prompt_ids, request.params)) as outputs:
            async for out in outputs:
                yield out
                if out.finish_reason == STEERING_ABORT:
                    raise RuntimeError("the generation was stopped by a steering abort scope")

    def request(
        self,
        messages: list[Message],
        max_tokens: int | None,
        temperature: float | None,
        top_p: float | None,
        emotion_coefficients: Mapping[str, float] | None,
        *,
        grammar: Grammar | None = None,
        tools: list[Tool] | None = None,
        tool_choice: ToolChoice = "none",
    ) -> EngineRequest:
        """The engine request: the chat-formatted prompt (with the `tools` offered) and the
        sampling parameters (with the steering plan and the grammar), through the one
        request path."""
        conversation, offered = tool_format.conversation(
            template_messages(messages), tools or [], tool_choice, self.requests.supports_tools
        )
        prompt = self.requests.chat(conversation, tools=offered)
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
            grammar=grammar,
        )
