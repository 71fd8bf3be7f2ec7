"""Generation on the engine: running one or several engine requests (built by the request
path, requests/builder.py) and the time-to-first-token metric.

Everything here talks to the engine only through `AsyncLLMEngine.submit`; closing an
iterator returned here aborts its sequences (the engine frees their KV blocks).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field, replace

from glassbox import tracing
from glassbox.engine.async_engine import AsyncLLMEngine
from glassbox.engine.block_manager import KVHandle
from glassbox.engine.errors import EngineDeadError
from glassbox.engine.llm_engine import StepOutput
from glassbox.engine.readout import TokenFeatures
from glassbox.engine.sequence import SamplingParams, TokenLogprob
from glassbox.metrics import Metrics
from glassbox.requests.builder import UNBOUNDED, EngineRequest, RequestBounds, RequestBuilder


@dataclass
class Generation:
    """One finished sequence."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    features: list[TokenFeatures] = field(default_factory=list)  # see StepOutput.features
    finish_reason: str | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    abort_scope: int | None = None  # see StepOutput.abort_scope

    def add(self, out: StepOutput) -> None:
        self.text += out.text
        self.token_ids += out.token_ids
        self.logprobs += out.logprobs
        self.features += out.features
        self.num_prompt_tokens = out.num_prompt_tokens
        self.num_output_tokens = out.num_output_tokens
        if out.finish_reason is not None:
            self.finish_reason = out.finish_reason
            self.abort_scope = out.abort_scope


class GenerationService:
    """Runs engine requests (built by `self.requests`, the one request path) and keeps the
    token metrics."""

    def __init__(self, engine: AsyncLLMEngine, metrics: Metrics, bounds: RequestBounds = UNBOUNDED):
        self.engine = engine
        self.metrics = metrics
        self.tokenizer = engine.tokenizer
        self.max_model_len = engine.max_model_len
        self.requests = RequestBuilder.for_engine(engine, bounds)
        self.steered = 0  # requests run with a steering plan (for /metrics)

    def ensure_alive(self) -> None:
        """Refuse now (a 503) what a stopped engine cannot run: a stream would otherwise
        answer 200 before the engine's refusal arrives."""
        if not self.engine.is_alive:
            raise EngineDeadError("the engine has stopped")

    @staticmethod
    def for_choice(request: EngineRequest, index: int) -> EngineRequest:
        """Choice i of n samples with seed + i, so choices differ yet reproduce."""
        params = request.params
        if params.seed is None or index == 0:
            return request
        return replace(request, params=replace(params, seed=params.seed + index))

    # --- running ------------------------------------------------------------------------

    async def stream(
        self, prompt_ids: list[int], params: SamplingParams, prefix: KVHandle | None = None
    ) -> AsyncIterator[StepOutput]:
        """The sequence's outputs; `prefix`: the KV of the prompt's start (see
        `LLMEngine.add_request`)."""
        t0 = time.perf_counter()
        first = True
        self.steered += params.steering is not None
        span = tracing.engine_span(len(prompt_ids), params.max_tokens)  # None: tracing off
        error = None
        try:
            async with aclosing(self.engine.submit(prompt_ids, params, prefix)) as outputs:
                async for out in outputs:
                    if first:
                        first = False
                        self.metrics.ttft.observe(time.perf_counter() - t0)
                    if span is not None:
                        span.output(out)
                    yield out
        except BaseException as exc:
            error = exc
            raise
        finally:
            if span is not None:
                span.end(error)

    async def stream_many(
        self, requests: list[EngineRequest]
    ) -> AsyncIterator[tuple[int, StepOutput]]:
        """Run requests concurrently; yields (request index, output) as outputs arrive."""
        queue: asyncio.Queue[tuple[int, StepOutput | Exception]] = asyncio.Queue()

        async def pump(index: int, request: EngineRequest) -> None:
            try:
                async with aclosing(self.stream(request.prompt_ids, request.params)) as outputs:
                    async for out in outputs:
                        queue.put_nowait((index, out))
            except Exception as exc:
                queue.put_nowait((index, exc))

        tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(requests)]
        remaining = len(tasks)
        try:
            while remaining:
                index, item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield index, item
                if item.finish_reason is not None:
                    remaining -= 1
        finally:
            # Cancelling a pump closes its engine stream, which aborts the sequence. No await
            # here: under a cancelled anyio scope (a disconnected SSE client) it would not run.
            for task in tasks:
                task.cancel()

    async def generate_many(self, requests: list[EngineRequest]) -> list[Generation]:
        results = [Generation() for _ in requests]
        async with aclosing(self.stream_many(requests)) as outputs:
            async for index, out in outputs:
                results[index].add(out)
        return results

    def stats(self) -> dict[str, int]:
        return {**self.engine.stats(), "steered_requests": self.steered}
