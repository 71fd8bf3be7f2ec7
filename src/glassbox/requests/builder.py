"""The one request path: what a client sends -> a checked engine request.

Every capability builds its engine requests here: the OpenAI and Ember routes, KV states
and beam search, features (inspect, contrast, logits), the local backend and `glassbox chat`.

    messages --chat template--> token ids --+
    text     --tokenizer------> token ids --+--> vocabulary and context checks
    token ids ----------------------------- +          |
    sampling fields + steering plan + grammar (+ session: next) --> SamplingParams
                                                       |
                                                       v
                                          EngineRequest(prompt_ids, params)

The chat template is applied here and nowhere else, so every surface turns the same
messages into the same token ids; every check says which request field is at fault, with
one wording for the context limit. Built objects are frozen: nothing changes a request
after it has been checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from glassbox.engine.async_engine import AsyncLLMEngine
from glassbox.engine.grammar import Grammar
from glassbox.engine.sequence import SamplingParams
from glassbox.errors import ContextLengthExceeded, InvalidRequest
from glassbox.models.tokenizer import ChatTemplateError, Tokenizer
from glassbox.steering.plan import SteeringPlan


@contextmanager
def about(param: str) -> Iterator[None]:
    """What the engine refuses inside this block is about the request's field `param` (the
    engine names the prompt it was given, not the field the prompt came from)."""
    try:
        yield
    except InvalidRequest as exc:
        exc.param = param
        raise


@dataclass(frozen=True)
class EngineRequest:
    """One sequence for the engine: a checked prompt and its sampling parameters."""

    prompt_ids: list[int]
    params: SamplingParams


# How many of a prefix's last tokens `chat_after` gives up before it tokenizes the whole text.
TAIL_TOKENS = 8


class RequestBuilder:
    def __init__(self, tokenizer: Tokenizer, vocab_size: int, max_model_len: int):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size  # the model's (may be padded beyond the tokenizer's)
        self.max_model_len = max_model_len

    @classmethod
    def for_engine(cls, engine: AsyncLLMEngine) -> RequestBuilder:
        return cls(engine.tokenizer, engine.vocab_size, engine.max_model_len)

    # --- prompts ------------------------------------------------------------------------

    def chat(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        *,
        param: str = "messages",
        tools: list[dict[str, Any]] | None = None,
    ) -> list[int]:
        """The chat-formatted conversation's token ids; `tools` (OpenAI's shape) go to a
        template that renders them (see `supports_tools`)."""
        try:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt, tools)
        except ChatTemplateError as exc:
            raise InvalidRequest(str(exc), param=param) from exc

    def chat_after(
        self, prefix_ids: list[int], messages: list[dict[str, Any]], *, param: str = "messages"
    ) -> list[int]:
        """The chat-formatted `messages` as `prefix_ids` (the conversation's start as the model
        read and wrote it, e.g. a chat session's KV state) followed by the tokens of the rest
        of the template's text. Re-tokenizing the whole text could split a generated reply
        into other tokens than the model wrote, and every token from there on would have to
        be computed again. When the prefix's text (less at most TAIL_TOKENS of its last
        tokens) is not the start of the template's text (another history), the whole
        conversation is tokenized (`chat`)."""
        try:
            full = self.tokenizer.chat_text(messages)
        except ChatTemplateError as exc:
            raise InvalidRequest(str(exc), param=param) from exc
        # A reply cut inside a character (max_tokens) ends in bytes that decode to U+FFFD,
        # which its stored text leaves out: drop such last tokens of the prefix.
        for end in range(len(prefix_ids), max(len(prefix_ids) - TAIL_TOKENS, 0), -1):
            known = self.tokenizer.decode(prefix_ids[:end], skip_special_tokens=False)
            if full.startswith(known):
                rest = self.text(full[len(known) :], add_special_tokens=False)
                return list(prefix_ids[:end]) + rest
        return self.chat(messages, param=param)

    @property
    def supports_tools(self) -> bool:
        return self.tokenizer.supports_tools

    def text(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def token_ids(self, token_ids: Iterable[int], param: str) -> list[int]:
        """Token ids a client sent, checked against the model's vocabulary."""
        ids = list(token_ids)
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidRequest(
                f"'{param}' holds token id {bad[0]}, outside the vocabulary [0, {self.vocab_size})",
                param=param,
            )
        return ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(
            self.token_ids(token_ids, "tokens"), skip_special_tokens=skip_special_tokens
        )

    # --- the context --------------------------------------------------------------------

    def max_tokens(
        self, prompt_len: int, max_tokens: int | None, *, prompt_param: str, cap: bool = False
    ) -> int:
        """How many tokens the request may generate: `max_tokens`, or the rest of the
        context when it is None. A prompt that fills the context is refused; so is a
        `max_tokens` beyond it, unless `cap` (then it is lowered to what fits)."""
        limit = self.max_model_len
        if prompt_len < 1:
            raise InvalidRequest("the prompt is empty; send at least one token", param=prompt_param)
        if prompt_len >= limit:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens, but the prompt has "
                f"{prompt_len} tokens. Shorten the prompt to fewer than {limit} tokens.",
                param=prompt_param,
            )
        room = limit - prompt_len
        if max_tokens is None:
            return room
        if max_tokens > room and not cap:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens, but "
                f"{prompt_len + max_tokens} were requested ({prompt_len} in the prompt, "
                f"{max_tokens} for the completion). "
                f"Lower max_tokens to at most {room} or shorten the prompt.",
                param="max_tokens",
            )
        return min(max_tokens, room)

    # --- sampling -----------------------------------------------------------------------

    def params(
        self,
        *,
        max_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repetition_penalty: float = 1.0,
        logit_bias: Mapping[int, float] | None = None,
        stop: Iterable[str] = (),
        stop_token_ids: Iterable[int] = (),
        ignore_eos: bool = False,
        seed: int | None = None,
        logprobs: int | None = None,
        skip_special_tokens: bool = True,
        steering: SteeringPlan | None = None,
        keep_kv: bool = False,
        grammar: Grammar | None = None,
    ) -> SamplingParams:
        """Sampling parameters with their token ids checked (`logit_bias` keys,
        `stop_token_ids`); `top_k` of 0 or below turns top-k off. `grammar` (compiled by
        glassbox.structured) constrains every generated token."""
        bias = {int(k): float(v) for k, v in (logit_bias or {}).items()}
        self.token_ids(bias, "logit_bias")
        stops = list(stop)
        if any(not s for s in stops):
            raise InvalidRequest("stop strings must not be empty", param="stop")
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=max(top_k, 0),
            min_p=min_p,
            presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty,
            repetition_penalty=repetition_penalty,
            logit_bias=bias,
            stop=stops,
            stop_token_ids=self.token_ids(stop_token_ids, "stop_token_ids"),
            ignore_eos=ignore_eos,
            seed=seed,
            logprobs=logprobs,
            skip_special_tokens=skip_special_tokens,
            steering=None if steering is None or steering.is_empty else steering,
            keep_kv=keep_kv,
            grammar=grammar,
        )

    def request(
        self,
        prompt_ids: list[int],
        *,
        prompt_param: str,
        max_tokens: int | None = None,
        cap: bool = False,
        **sampling: Any,
    ) -> EngineRequest:
        """A checked engine request: the context check of `max_tokens` (see `max_tokens`),
        then the sampling parameters (`params`' keywords)."""
        budget = self.max_tokens(len(prompt_ids), max_tokens, prompt_param=prompt_param, cap=cap)
        return EngineRequest(list(prompt_ids), self.params(max_tokens=budget, **sampling))
