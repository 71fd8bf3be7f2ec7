"""Generation on the engine: prompt checks against the context, sampling parameters, running
one or several sequences, and the token metrics.

Everything here talks to the engine only through `AsyncLLMEngine.submit`; closing an
iterator returned here aborts its sequences (the engine frees their KV blocks).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field, replace

from glassbox.engine.async_engine import AsyncLLMEngine
from glassbox.engine.block_manager import KVHandle
from glassbox.engine.llm_engine import StepOutput
from glassbox.engine.sequence import SamplingParams, TokenLogprob
from glassbox.errors import ContextLengthExceeded, InvalidRequest
from glassbox.metrics import Metrics
from glassbox.models.tokenizer import ChatTemplateError


@dataclass
class Generation:
    """One finished sequence."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    abort_scope: int | None = None  # see StepOutput.abort_scope

    def add(self, out: StepOutput) -> None:
        self.text += out.text
        self.token_ids += out.token_ids
        self.logprobs += out.logprobs
        self.num_prompt_tokens = out.num_prompt_tokens
        self.num_output_tokens = out.num_output_tokens
        if out.finish_reason is not None:
            self.finish_reason = out.finish_reason
            self.abort_scope = out.abort_scope


@dataclass
class Job:
    prompt_ids: list[int]
    params: SamplingParams


class GenerationService:
    def __init__(self, engine: AsyncLLMEngine, metrics: Metrics):
        self.engine = engine
        self.metrics = metrics
        self.tokenizer = engine.tokenizer
        self.max_model_len = engine.max_model_len

    # --- prompts ------------------------------------------------------------------------

    def chat_prompt(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        try:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt)
        except ChatTemplateError as exc:
            raise InvalidRequest(str(exc), param="messages") from exc

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        self.check_token_ids(token_ids, "tokens")
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def check_token_ids(self, token_ids: list[int], param: str) -> None:
        vocab = self.engine.vocab_size
        bad = [t for t in token_ids if not 0 <= t < vocab]
        if bad:
            raise InvalidRequest(
                f"'{param}' holds token id {bad[0]}, outside the vocabulary [0, {vocab})",
                param=param,
            )

    def check_length(self, prompt_len: int, max_tokens: int | None, prompt_param: str) -> int:
        """Validate prompt + max_tokens against the context; returns max_tokens to use."""
        limit = self.max_model_len
        if prompt_len >= limit:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens, but the prompt has "
                f"{prompt_len} tokens. Shorten the prompt to fewer than {limit} tokens.",
                param=prompt_param,
            )
        if max_tokens is None:
            return limit - prompt_len
        if prompt_len + max_tokens > limit:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens, but "
                f"{prompt_len + max_tokens} were requested ({prompt_len} in the prompt, "
                f"{max_tokens} for the completion). "
                f"Lower max_tokens to at most {limit - prompt_len} or shorten the prompt.",
                param="max_tokens",
            )
        return max_tokens

    # --- sampling parameters ----------------------------------------------------------

    def sampling_params(self, req, *, max_tokens: int, logprobs: int | None) -> SamplingParams:
        """SamplingParams from the fields chat and completions share (`_SamplingFields`)."""
        bias: dict[int, float] = {}
        if req.logit_bias:
            bias = {int(k): float(v) for k, v in req.logit_bias.items()}
            self.check_token_ids(list(bias), "logit_bias")
        stop_ids = list(req.stop_token_ids or [])
        self.check_token_ids(stop_ids, "stop_token_ids")
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=max(req.top_k, 0),
            min_p=req.min_p,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            repetition_penalty=req.repetition_penalty,
            logit_bias=bias,
            stop=req.stop_list,
            stop_token_ids=stop_ids,
            ignore_eos=req.ignore_eos,
            seed=req.seed,
            logprobs=logprobs,
            skip_special_tokens=req.skip_special_tokens,
        )

    @staticmethod
    def for_choice(params: SamplingParams, index: int) -> SamplingParams:
        """Choice i of n samples with seed + i, so choices differ yet reproduce."""
        if params.seed is None or index == 0:
            return params
        return replace(params, seed=params.seed + index)

    # --- running ------------------------------------------------------------------------

    async def stream(
        self, prompt_ids: list[int], params: SamplingParams, prefix: KVHandle | None = None
    ) -> AsyncIterator[StepOutput]:
        """The sequence's outputs; `prefix`: the KV of the prompt's start (see
        `LLMEngine.add_request`)."""
        t0 = time.perf_counter()
        first = True
        async with aclosing(self.engine.submit(prompt_ids, params, prefix)) as outputs:
            async for out in outputs:
                if first:
                    first = False
                    self.metrics.ttft.observe(time.perf_counter() - t0)
                yield out

    async def stream_many(self, jobs: list[Job]) -> AsyncIterator[tuple[int, StepOutput]]:
        """Run jobs concurrently; yields (job index, output) as outputs arrive."""
        queue: asyncio.Queue[tuple[int, StepOutput | Exception]] = asyncio.Queue()

        async def pump(index: int, job: Job) -> None:
            try:
                async with aclosing(self.stream(job.prompt_ids, job.params)) as outputs:
                    async for out in outputs:
                        queue.put_nowait((index, out))
            except Exception as exc:
                queue.put_nowait((index, exc))

        tasks = [asyncio.create_task(pump(i, job)) for i, job in enumerate(jobs)]
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

    async def generate_many(self, jobs: list[Job]) -> list[Generation]:
        results = [Generation() for _ in jobs]
        async with aclosing(self.stream_many(jobs)) as outputs:
            async for index, out in outputs:
                results[index].add(out)
        return results

    def stats(self) -> dict[str, int]:
        return self.engine.stats()
