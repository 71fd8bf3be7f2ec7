"""OpenAI's chat/completions semantics over the generation service: prompts from requests,
n choices, usage, logprobs in OpenAI's shapes, and the stream of chunks; plus vLLM's
tokenize/detokenize, which share the chat-message handling."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from glassbox.api.features.readout import ReadoutLabels, TokenReadout
from glassbox.api.openai.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
    CompletionRequest,
    DeltaMessage,
    FunctionCallDelta,
    FunctionCallOut,
    LegacyLogprobs,
    TokenLogprobOut,
    ToolCallDelta,
    ToolCallOut,
    TopLogprob,
    Usage,
    template_messages,
)
from glassbox.api.system.schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from glassbox.engine.grammar import GRAMMAR_FAILED, Grammar
from glassbox.engine.readout import Readout, TokenFeatures
from glassbox.engine.sequence import STEERING_ABORT, TokenLogprob
from glassbox.errors import Aborted, InvalidRequest, Unavailable, Unsupported
from glassbox.features.emotion import EmotionalState
from glassbox.features.steering import SteeringService
from glassbox.principal import Principal
from glassbox.requests.builder import EngineRequest
from glassbox.requests.generation import Generation, GenerationService
from glassbox.steering.plan import SteeringPlan
from glassbox.structured import tools as tool_calls
from glassbox.structured.grammar import GrammarCompiler
from glassbox.structured.tools import CallStream, Tool


def _finish_reason(reason: str | None) -> str | None:
    if reason == "abort":
        raise Unavailable("the engine aborted the generation; retry the request")
    if reason == STEERING_ABORT:
        raise Aborted(
            "generation aborted: an abort_when condition of the variant held", param="variant"
        )
    if reason == GRAMMAR_FAILED:
        raise Unavailable("the grammar matcher failed during generation; retry the request")
    return reason


def _tools(req: ChatCompletionRequest) -> list[Tool]:
    return [
        Tool(
            t.function.name,
            t.function.description or "",
            t.function.parameters or {"type": "object", "properties": {}},
            bool(t.function.strict),
        )
        for t in req.tools or []
    ]


class OpenAIService:
    def __init__(
        self,
        generation: GenerationService,
        steering: SteeringService | None = None,
        grammars: GrammarCompiler | None = None,
    ):
        self.gen = generation
        self.steering = steering
        self.grammars = grammars or GrammarCompiler(
            generation.tokenizer, generation.requests.vocab_size
        )
        self.tokenizer = generation.tokenizer
        self._token_text: dict[int, str] = {}

    async def _plan(self, owner: Principal, req) -> SteeringPlan | None:
        """The request's variant (`variant` inline, or `session_id` + `variant_id` stored)
        and its emotion (`emotion_coefficients` or `emotional_state`) resolved into the
        steering plan that every choice carries."""
        coefficients = req.emotion_coefficients
        if req.emotional_state is not None:
            state = EmotionalState(req.emotional_state.valence, req.emotional_state.arousal)
            coefficients = state.get_steering_coefficients()
        wants_variant = req.variant is not None or req.session_id is not None
        if not wants_variant and not coefficients:  # {}: no emotion, no features to load
            return None
        if self.steering is None:
            raise Unsupported("variant", "this server has no feature dictionaries")
        return await self.steering.request_plan(
            owner, req.variant, req.session_id, req.variant_id, coefficients
        )

    async def _readout(
        self, req: ChatCompletionRequest | CompletionRequest
    ) -> tuple[Readout | None, ReadoutLabels | None]:
        """The request's feature readout (`readout`), and what names its features."""
        if req.readout is None:
            return None, None
        if self.steering is None:
            raise Unsupported("readout", "this server has no feature dictionaries")
        options = req.readout
        readout, dictionary = await self.steering.readout(
            req.model, options.features, options.dictionary
        )
        return readout, ReadoutLabels(dictionary)

    def readout(
        self, labels: ReadoutLabels, token_ids: list[int], found: list[TokenFeatures]
    ) -> list[TokenReadout]:
        """The tokens' readout as the responses carry it."""
        return [
            TokenReadout(token=self.token_text(t), token_id=t, features=labels.features(f))
            for t, f in zip(token_ids, found, strict=True)
        ]

    def _grammar(self, req: ChatCompletionRequest | CompletionRequest) -> Grammar | None:
        """The constraint of `response_format` or a guided_* field (compiled, cached)."""
        compile_ = self.grammars
        if req.response_format is not None and req.response_format.type != "text":
            return compile_.response_format(req.response_format.model_dump(by_alias=True))
        guided = req.guided()
        if guided is None:
            return None
        name, value = guided
        if name == "guided_json":
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as exc:
                    raise InvalidRequest(f"guided_json is not JSON: {exc}", param=name) from exc
            return compile_.json_schema(value, param=name)
        if name == "guided_regex":
            return compile_.regex(value)
        if name == "guided_choice":
            return compile_.choice(value)
        return compile_.lark(value)

    def _tool_grammar(self, req: ChatCompletionRequest, tools: list[Tool]) -> Grammar:
        parallel = req.parallel_tool_calls is not False
        return tool_calls.compile_grammar(self.grammars, tools, req.tool_choice_name, parallel)

    # --- logprobs -----------------------------------------------------------------------

    def token_text(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = self.tokenizer.token_str(token_id)
        return text

    def _top(self, token_id: int, logprob: float) -> TopLogprob:
        text = self.token_text(token_id)
        return TopLogprob(token=text, logprob=logprob, bytes=list(text.encode("utf-8")))

    def chat_logprobs(self, infos: list[TokenLogprob]) -> ChoiceLogprobs:
        content = []
        for info in infos:
            chosen = self._top(info.token_id, info.logprob)
            top = [self._top(t, lp) for t, lp in info.top]
            content.append(TokenLogprobOut(**chosen.model_dump(), top_logprobs=top))
        return ChoiceLogprobs(content=content)

    def legacy_logprobs(self, infos: list[TokenLogprob], offset: int) -> LegacyLogprobs:
        out = LegacyLogprobs()
        for info in infos:
            text = self.token_text(info.token_id)
            top = {self.token_text(t): lp for t, lp in info.top}
            top.setdefault(text, info.logprob)
            out.tokens.append(text)
            out.token_logprobs.append(info.logprob)
            out.top_logprobs.append(top)
            out.text_offset.append(offset)
            offset += len(text)
        return out

    # --- chat ---------------------------------------------------------------------------

    async def _chat_requests(
        self, owner: Principal, req: ChatCompletionRequest
    ) -> tuple[list[EngineRequest], ReadoutLabels | None]:
        """One engine request per choice, and what names the readout's features (None:
        no readout asked)."""
        if (bad := req.unsupported()) is not None:
            raise Unsupported(*bad)
        build = self.gen.requests
        build.choices(req.n)
        readout, labels = await self._readout(req)
        tools, choice = _tools(req), req.tool_choice_name
        # Compiling takes ~1 ms for a typical schema, more for a large one: off the event loop.
        if tools and choice != "none":
            grammar = await asyncio.to_thread(self._tool_grammar, req, tools)
        else:
            grammar = await asyncio.to_thread(self._grammar, req)
        messages = template_messages(req.messages)
        offered = None
        if tools or _has_tool_turns(messages):
            messages, offered = tool_calls.conversation(
                messages, tools, choice, build.supports_tools
            )
        prompt = build.chat(messages, req.add_generation_prompt, tools=offered)
        max_tokens = build.max_tokens(len(prompt), req.max_new_tokens, prompt_param="messages")
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        params = build.params(
            max_tokens=max_tokens, logprobs=logprobs, steering=await self._plan(owner, req),
            grammar=grammar, readout=readout, **_sampling_fields(req),
        )  # fmt: skip
        first = EngineRequest(prompt, params)
        return [self.gen.for_choice(first, i) for i in range(req.n)], labels

    async def chat(
        self, owner: Principal, req: ChatCompletionRequest, model: str
    ) -> ChatCompletion:
        requests, labels = await self._chat_requests(owner, req)
        results = await self.gen.generate_many(requests)
        calling = bool(req.tools) and req.tool_choice_name != "none"
        choices = []
        for i, g in enumerate(results):
            reason = _finish_reason(g.finish_reason)
            message = AssistantMessage(content=g.text)
            if calling:
                content, calls = tool_calls.parse(g.text)
                if calls:
                    message = AssistantMessage(
                        content=content or None,
                        tool_calls=[
                            ToolCallOut(id=c.id, function=FunctionCallOut(name=c.name,
                                                                          arguments=c.arguments))
                            for c in calls
                        ],
                    )  # fmt: skip
                    if reason == "stop":
                        reason = "tool_calls"
            choices.append(
                ChatChoice(
                    index=i,
                    message=message,
                    logprobs=self.chat_logprobs(g.logprobs) if req.logprobs else None,
                    readout=self.readout(labels, g.token_ids, g.features) if labels else None,
                    finish_reason=reason,
                )
            )
        return ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            model=model,
            choices=choices,
            usage=_usage(requests, results, req.n),
        )

    async def chat_stream(
        self, owner: Principal, req: ChatCompletionRequest, model: str
    ) -> AsyncIterator[str]:
        """Validates now (errors become ordinary 4xx responses), then streams chunk JSON."""
        self.gen.ensure_alive()
        requests, labels = await self._chat_requests(owner, req)
        return self._chat_chunks(req, requests, model, labels)

    async def _chat_chunks(
        self,
        req: ChatCompletionRequest,
        requests: list[EngineRequest],
        model: str,
        labels: ReadoutLabels | None = None,
    ) -> AsyncIterator[str]:
        cid = f"chatcmpl-{uuid.uuid4().hex}"

        def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> str:
            body = ChatCompletionChunk(id=cid, model=model, choices=choices, usage=usage)
            data = body.model_dump(mode="json")
            for choice, out in zip(data["choices"], choices, strict=True):
                # OpenAI sends only the delta's set fields
                choice["delta"] = out.delta.model_dump(mode="json", exclude_none=True)
            return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

        calling = bool(req.tools) and req.tool_choice_name != "none"
        parsers = [CallStream() for _ in requests] if calling else []
        called = [False] * len(requests)

        def deltas(i: int, text: str, final: bool) -> list[DeltaMessage]:
            """The deltas of a piece of text: itself, or (with tools) content and call
            pieces as OpenAI streams them."""
            if not calling:
                return [DeltaMessage(content=text)] if text else []
            events = list(parsers[i].feed(text))
            if final:
                events += list(parsers[i].end())
            out = []
            for e in events:
                if e.kind == "content":
                    out.append(DeltaMessage(content=e.text))
                    continue
                called[i] = True
                function = FunctionCallDelta(arguments=e.text)
                call = ToolCallDelta(index=e.index, function=function)
                if e.kind == "name":
                    call = ToolCallDelta(
                        index=e.index, id=e.call_id, type="function",
                        function=FunctionCallDelta(name=e.text, arguments=""),
                    )  # fmt: skip
                out.append(DeltaMessage(tool_calls=[call]))
            return out

        for i in range(len(requests)):
            yield chunk(
                [ChatChunkChoice(index=i, delta=DeltaMessage(role="assistant", content=""))]
            )
        results = [Generation() for _ in requests]
        async with aclosing(self.gen.stream_many(requests)) as outputs:
            async for i, out in outputs:
                results[i].add(out)
                logprobs = readout = None
                if req.logprobs and out.logprobs:
                    logprobs = self.chat_logprobs(out.logprobs)
                if labels is not None and out.features:
                    readout = self.readout(labels, out.token_ids, out.features)
                pieces = deltas(i, out.text, out.finish_reason is not None)
                if (logprobs is not None or readout is not None) and not pieces:
                    pieces = [DeltaMessage()]
                for k, delta in enumerate(pieces):
                    first = k == 0
                    yield chunk(
                        [ChatChunkChoice(index=i, delta=delta, logprobs=logprobs if first else None,
                                         readout=readout if first else None)]
                    )  # fmt: skip
                if out.finish_reason is not None:
                    reason = _finish_reason(out.finish_reason)
                    if called[i] and reason == "stop":
                        reason = "tool_calls"
                    yield chunk(
                        [ChatChunkChoice(index=i, delta=DeltaMessage(), finish_reason=reason)]
                    )
        if req.include_usage:
            yield chunk([], _usage(requests, results, req.n))

    # --- completions --------------------------------------------------------------------

    async def _completion_requests(
        self, owner: Principal, req: CompletionRequest
    ) -> tuple[list[EngineRequest], list[str], ReadoutLabels | None]:
        """Requests ordered prompt-major (prompt p, choice i -> index p * n + i), the
        prompt texts (for echo), and what names the readout's features (None: none asked)."""
        if (bad := req.unsupported()) is not None:
            raise Unsupported(*bad)
        build = self.gen.requests
        build.choices(req.n)
        plan = await self._plan(owner, req)
        readout, labels = await self._readout(req)
        grammar = await asyncio.to_thread(self._grammar, req)
        requests, texts = [], []
        for prompt in req.prompts():
            if isinstance(prompt, str):
                ids = build.text(prompt)
                text = prompt
            else:
                ids = build.token_ids(prompt, "prompt")
                text = self.tokenizer.decode(ids) if req.echo else ""
            first = build.request(
                ids, prompt_param="prompt", max_tokens=req.max_tokens, logprobs=req.logprobs,
                steering=plan, grammar=grammar, readout=readout, **_sampling_fields(req),
            )  # fmt: skip
            for i in range(req.n):
                requests.append(self.gen.for_choice(first, i))
                texts.append(text)
        return requests, texts, labels

    async def completion(self, owner: Principal, req: CompletionRequest, model: str) -> Completion:
        requests, texts, labels = await self._completion_requests(owner, req)
        results = await self.gen.generate_many(requests)
        choices = []
        for i, (g, prompt_text) in enumerate(zip(results, texts, strict=True)):
            prefix = prompt_text if req.echo else ""
            logprobs = None
            if req.logprobs is not None:
                logprobs = self.legacy_logprobs(g.logprobs, len(prefix))
            readout = self.readout(labels, g.token_ids, g.features) if labels else None
            choices.append(
                CompletionChoice(index=i, text=prefix + g.text, logprobs=logprobs,
                                 readout=readout, finish_reason=_finish_reason(g.finish_reason))
            )  # fmt: skip
        return Completion(
            id=f"cmpl-{uuid.uuid4().hex}",
            model=model,
            choices=choices,
            usage=_usage(requests, results, req.n),
        )

    async def completion_stream(
        self, owner: Principal, req: CompletionRequest, model: str
    ) -> AsyncIterator[str]:
        self.gen.ensure_alive()
        requests, texts, labels = await self._completion_requests(owner, req)
        return self._completion_chunks(req, requests, texts, labels, model)

    async def _completion_chunks(
        self,
        req: CompletionRequest,
        requests: list[EngineRequest],
        texts: list[str],
        labels: ReadoutLabels | None,
        model: str,
    ) -> AsyncIterator[str]:
        cid = f"cmpl-{uuid.uuid4().hex}"

        def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
            return Completion(id=cid, model=model, choices=choices, usage=usage).model_dump_json()

        offsets = [len(t) if req.echo else 0 for t in texts]
        if req.echo:
            for i, text in enumerate(texts):
                yield chunk([CompletionChoice(index=i, text=text, finish_reason=None)])
        results = [Generation() for _ in requests]
        async with aclosing(self.gen.stream_many(requests)) as outputs:
            async for i, out in outputs:
                results[i].add(out)
                logprobs = None
                if req.logprobs is not None:
                    logprobs = self.legacy_logprobs(out.logprobs, offsets[i])
                    offsets[i] += sum(len(t) for t in logprobs.tokens)
                readout = None
                if labels is not None and out.features:
                    readout = self.readout(labels, out.token_ids, out.features)
                reason = _finish_reason(out.finish_reason)
                if out.text or logprobs is not None or readout is not None or reason is not None:
                    yield chunk(
                        [CompletionChoice(index=i, text=out.text, logprobs=logprobs,
                                          readout=readout, finish_reason=reason)]
                    )  # fmt: skip
        if req.include_usage:
            yield chunk([], _usage(requests, results, req.n))

    # --- tokenize (vLLM-compatible) --------------------------------------------------

    def tokenize(self, req: TokenizeRequest) -> TokenizeResponse:
        build = self.gen.requests
        if req.messages is not None:
            ids = build.chat(template_messages(req.messages), req.add_generation_prompt)
        else:
            add_special = True if req.add_special_tokens is None else req.add_special_tokens
            ids = build.text(req.prompt or "", add_special_tokens=add_special)
        return TokenizeResponse(tokens=ids, count=len(ids), max_model_len=self.gen.max_model_len)

    def detokenize(self, req: DetokenizeRequest) -> DetokenizeResponse:
        return DetokenizeResponse(prompt=self.gen.requests.decode(req.tokens))


def _sampling_fields(req: ChatCompletionRequest | CompletionRequest) -> dict[str, Any]:
    """The sampling fields chat and completions share, as the request path's keywords."""
    return {
        "temperature": req.temperature,
        "top_p": req.top_p,
        "top_k": req.top_k,
        "min_p": req.min_p,
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
        "repetition_penalty": req.repetition_penalty,
        "logit_bias": {int(k): v for k, v in (req.logit_bias or {}).items()},
        "stop": req.stop_list,
        "stop_token_ids": req.stop_token_ids or [],
        "ignore_eos": req.ignore_eos,
        "seed": req.seed,
        "skip_special_tokens": req.skip_special_tokens,
    }


def _has_tool_turns(messages: list[dict[str, Any]]) -> bool:
    return any(m.get("tool_calls") or m["role"] == "tool" for m in messages)


def _usage(requests: list[EngineRequest], results: list[Generation], n: int) -> Usage:
    # Requests are prompt-major with n choices per prompt: each prompt counts once, as
    # OpenAI counts them.
    prompt = sum(len(r.prompt_ids) for r in requests[::n])
    completion = sum(g.num_output_tokens for g in results)
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )
