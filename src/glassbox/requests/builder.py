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
one wording for the context limit. The server's bounds on what one request may ask for
(`RequestBounds`: prompt tokens, generated tokens, choices, stop strings, time) are checked
here too, so that no surface forgets one. Built objects are frozen: nothing changes a request
after it has been checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from glassbox.engine.async_engine import AsyncLLMEngine
from glassbox.engine.grammar import Grammar
from glassbox.engine.readout import Readout
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
class RequestBounds:
    """What one request may ask for, set by the server's operator (GLASSBOX_MAX_*). None: no
    bound beyond the model's context."""

    max_prompt_tokens: int | None = None
    max_generated_tokens: int | None = None  # per choice
    max_choices: int = 16
    max_stop_strings: int = 16
    max_stop_chars: int = 256
    timeout_seconds: float | None = None  # from submission to the last token


UNBOUNDED = RequestBounds()


@dataclass(frozen=True)
class EngineRequest:
    """One sequence for the engine: a checked prompt and its sampling parameters."""

    prompt_ids: list[int]
    params: SamplingParams


def _chars(value: Any) -> int:
    """The characters of every string in messages (contents, roles, names, OpenAI's lists of
    parts): what the template may copy into the prompt."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_chars(item) for item in value)
    if isinstance(value, dict):
        return sum(_chars(item) for item in value.values())
    return 0


# How many of a prefix's last tokens `chat_after` gives up before it tokenizes the whole text.
TAIL_TOKENS = 8


class RequestBuilder:
    def __init__(
        self,
        tokenizer: Tokenizer,
        vocab_size: int,
        max_model_len: int,
        bounds: RequestBounds = UNBOUNDED,
    ):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size  # the model's (may be padded beyond the tokenizer's)
        self.max_model_len = max_model_len
        self.bounds = bounds

    @classmethod
    def for_engine(
        cls, engine: AsyncLLMEngine, bounds: RequestBounds = UNBOUNDED
    ) -> RequestBuilder:
        return cls(engine.tokenizer, engine.vocab_size, engine.max_model_len, bounds)

    @property
    def context_limit(self) -> int:
        """The tokens a conversation (prompt and reply) may fill: the model's context, or
        less where the server bounds prompts (what a chat session fits its history into)."""
        if self.bounds.max_prompt_tokens is None:
            return self.max_model_len
        return min(self.max_model_len, self.bounds.max_prompt_tokens)

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
        self.check_size(messages, param)
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
        self.check_size(messages, param)
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

    def text(
        self, text: str, add_special_tokens: bool = True, *, param: str = "prompt"
    ) -> list[int]:
        self.check_size(text, param)
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def check_size(self, prompt: str | list[dict[str, Any]], param: str) -> None:
        """Refuse, before tokenizing it, a text or conversation that no tokenization could fit
        into the context: more characters than `context_limit` tokens of the longest kind
        hold, or more messages than tokens (each costs at least one). Tokenizing megabytes
        takes seconds, and would hold up every other request meanwhile."""
        limit = self.context_limit
        if isinstance(prompt, str):
            chars = len(prompt)
        else:
            if len(prompt) > limit:
                raise ContextLengthExceeded(
                    f"'{param}' holds {len(prompt)} messages; the context holds {limit} tokens",
                    param=param,
                )
            chars = _chars(prompt)
        if chars > limit * self.tokenizer.max_token_chars:
            raise ContextLengthExceeded(
                f"'{param}' has {chars} characters, more than {limit} tokens can hold; "
                f"this server's context is {limit} tokens",
                param=param,
            )

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
        context (at most the server's `max_generated_tokens`) when it is None. A prompt that
        fills the context or passes the server's `max_prompt_tokens` is refused; so is a
        `max_tokens` beyond the context or the server's `max_generated_tokens`, unless `cap`
        (then it is lowered to what fits)."""
        limit = self.max_model_len
        bounds = self.bounds
        if prompt_len < 1:
            raise InvalidRequest("the prompt is empty; send at least one token", param=prompt_param)
        if bounds.max_prompt_tokens is not None and prompt_len > bounds.max_prompt_tokens:
            raise ContextLengthExceeded(
                f"The prompt has {prompt_len} tokens; this server accepts prompts of at most "
                f"{bounds.max_prompt_tokens} tokens. Shorten the prompt.",
                param=prompt_param,
            )
        most = bounds.max_generated_tokens
        if max_tokens is not None and most is not None and max_tokens > most:
            if not cap:
                raise InvalidRequest(
                    f"max_tokens is {max_tokens}; this server generates at most {most} tokens "
                    "per request. Lower max_tokens.",
                    param="max_tokens",
                )
            max_tokens = most
        if prompt_len >= limit:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens, but the prompt has "
                f"{prompt_len} tokens. Shorten the prompt to fewer than {limit} tokens.",
                param=prompt_param,
            )
        room = limit - prompt_len
        if max_tokens is None:
            return room if most is None else min(room, most)
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
        readout: Readout | None = None,
    ) -> SamplingParams:
        """Sampling parameters with their token ids checked (`logit_bias` keys,
        `stop_token_ids`); `top_k` of 0 or below turns top-k off. `grammar` (compiled by
        glassbox.structured) constrains every generated token; `readout` (built by
        glassbox.features) reports each generated token's top features."""
        bias = {int(k): float(v) for k, v in (logit_bias or {}).items()}
        self.token_ids(bias, "logit_bias")
        stops = self.stops(stop)
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
            timeout=self.bounds.timeout_seconds,
            readout=readout,
        )

    def stops(self, stop: Iterable[str], param: str = "stop") -> list[str]:
        """Stop strings within the server's bounds (how many, how long); none empty."""
        stops = list(stop)
        bounds = self.bounds
        if len(stops) > bounds.max_stop_strings:
            raise InvalidRequest(
                f"'{param}' has {len(stops)} strings; at most {bounds.max_stop_strings} are "
                "accepted",
                param=param,
            )
        for text in stops:
            if not text:
                raise InvalidRequest("stop strings must not be empty", param=param)
            if len(text) > bounds.max_stop_chars:
                raise InvalidRequest(
                    f"a stop string has {len(text)} characters; at most "
                    f"{bounds.max_stop_chars} are accepted",
                    param=param,
                )
        return stops

    def choices(self, n: int, param: str = "n") -> int:
        """How many choices a request asks for (n, best_of), within the server's bound."""
        if not 1 <= n <= self.bounds.max_choices:
            raise InvalidRequest(
                f"'{param}' must be 1 to {self.bounds.max_choices}, got {n}", param=param
            )
        return n

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
