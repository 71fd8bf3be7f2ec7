"""llama-cpp-python as a backend (the `llamacpp` extra): GGUF models at llama.cpp speed.

llama.cpp's Python API cannot add vectors to the residual stream per request, so emotions
modulate sampling: the coefficients are logged and mapped to a valence/arousal state that
shifts temperature and top_p (`InferenceEngine.sampling`). A `Llama` is not thread-safe: one
generation runs at a time, on a worker thread under the backend's lock, so the event loop
stays free; closing a stream early stops its generation at the next token.

OpenAI's requests (`chat_completions`, `completions` and their streams) are served by
`Llama.create_chat_completion` / `create_completion`, which answer in OpenAI's shape. The
body's fields map onto llama.cpp's sampling: max_tokens (max_completion_tokens first),
temperature and top_p (the backend's defaults when absent), top_k (0 or -1: off), min_p,
stop, seed, presence_penalty, frequency_penalty, repetition_penalty (llama.cpp's
repeat_penalty), logit_bias, logprobs / top_logprobs (for a model loaded with
`logits_all=True`; llama.cpp lists the chosen token among the top ones, so a token may carry
top_logprobs + 1 of them, and no bytes), echo (completions) and response_format. Messages'
text content parts are joined, 'developer' is 'system'. A sampling field the body leaves
out is off, as in OpenAI's API and the local engine (no top_k, min_p or repetition penalty),
not llama-cpp-python's own defaults (top_k 40, min_p 0.05, repeat_penalty 1.1). llama.cpp
applies the three penalties to the last 64 tokens only.

Refused before any work, with `NotCapable` naming the field: more than one choice (`n`,
`best_of`), several prompts in one request, tools and functions (`tool_choice` and
`function_call` other than "none"/"auto"), vLLM's guided_* fields (`response_format` is the
way to constrain), `suffix`, `echo` with logprobs, logprobs without `logits_all`,
`stop_token_ids`, `ignore_eos`, `skip_special_tokens: false`, `add_generation_prompt: false`,
content parts other than text, audio output, reasoning and web search. Other fields (user,
metadata, stream_options, prediction, ...) do not change the output and are ignored.
llama-cpp-python's streams carry no token counts, so a stream with
`stream_options.include_usage` ends without a usage chunk.

Errors: a prompt that does not fit the context is `ContextLengthExceeded` (param "messages"
or "prompt"); a `max_tokens` beyond what fits after the prompt is lowered to what fits
(finish_reason "length"), where the local engine refuses it. A chat template that refuses the
messages is an `InvalidRequest`; anything else llama.cpp raises while generating is
`Unavailable` (logged). An unstreamed answer is generated to its end even when its caller
stops waiting; a stream stops when it is closed.

JSON output is enforced while decoding (`SUPPORTS_JSON_SCHEMA`): a json_schema
`response_format` becomes a GBNF grammar through llama.cpp's own converter, after its objects
are closed as the local engine closes them (`glassbox.structured.grammar.closed_schema`: no
keys beyond `properties` unless `additionalProperties` says otherwise); json_object is any
object, with the converter's single optional spaces (a small model cannot spend its tokens
on whitespace). A schema that is invalid or that the converter cannot turn into a grammar is
an `InvalidRequest` naming response_format. The converter ignores what it cannot enforce
(numeric bounds, most string formats) instead of refusing it.

Extra buffer types (llama.cpp's weight repacking, including the AMX matmul kernels) are off
by default: on this project's machines (Firecracker VMs whose CPUs report AMX) the AMX
kernels crash the process with a segfault in the first decode. `extra_buffer_types=True`
turns them back on where they work.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import aclosing
from pathlib import Path
from typing import Any

from glassbox.backends.base import (
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    InferenceEngine,
    Message,
    ResponseFormat,
)
from glassbox.errors import (
    ContextLengthExceeded,
    GlassboxError,
    InvalidRequest,
    NotCapable,
    Unavailable,
)
from glassbox.structured.grammar import check_schema, closed_schema

log = logging.getLogger(__name__)

NAME = "llama-cpp"
_DONE = object()
_PARAMS_LOCK = threading.Lock()
_CONTEXT = re.compile(r"Requested tokens \((\d+)\) exceed context window of (\d+)")
_TEMPLATE_ROLE = {"developer": "system"}  # chat templates know 'system', not 'developer'


def _off(value: Any) -> bool:
    return not value  # None, false, "", [] or {}: the field asks for nothing


# field -> (whether the value can be honoured, why not). Checked on every request.
Refusals = dict[str, tuple[Callable[[Any], bool], str]]
_ANY: Refusals = {
    "n": (lambda v: v in (None, 1), "it generates one choice per request (n must be 1)"),
    "guided_json": (_off, "use response_format with a json_schema"),
    "guided_regex": (_off, "regex constraints are not supported"),
    "guided_choice": (_off, "choice constraints are not supported"),
    "guided_grammar": (_off, "Lark grammars are not supported"),
    "stop_token_ids": (_off, "it stops on strings only (stop)"),
    "ignore_eos": (_off, "it always stops at the end token"),
    "skip_special_tokens": (lambda v: v in (None, True), "special tokens are always skipped"),
}
_CHAT: Refusals = {
    "tools": (_off, "it makes no tool calls"),
    "functions": (_off, "it makes no function calls"),
    "tool_choice": (lambda v: v in (None, "none", "auto"), "it makes no tool calls"),
    "function_call": (lambda v: v in (None, "none", "auto"), "it makes no function calls"),
    "add_generation_prompt": (lambda v: v in (None, True), "the prompt always ends with it"),
    "modalities": (lambda v: v in (None, ["text"]), "it answers in text only"),
    "audio": (_off, "it answers in text only"),
    "reasoning_effort": (_off, "the model does not reason"),
    "web_search_options": (_off, "it cannot search the web"),
}
_COMPLETION: Refusals = {
    "suffix": (_off, "llama-cpp-python's suffix (infill) tokens are not wired"),
    "best_of": (lambda v: v in (None, 1), "it generates one choice per request"),
}


class LlamaCppBackend(InferenceEngine):
    SUPPORTS_STEERING = False
    MODULATION_TYPE = "sampling"
    SUPPORTS_JSON_SCHEMA = True

    def __init__(
        self,
        model_path: str | Path,
        n_threads: int | None = None,
        n_ctx: int = 2048,
        temperature: float = DEFAULT_TEMPERATURE,
        top_p: float = DEFAULT_TOP_P,
        extra_buffer_types: bool = False,
        **llama_kwargs: Any,
    ):
        """`llama_kwargs` go to `llama_cpp.Llama` as they are (e.g. `chat_format`, `seed`,
        `logits_all=True` for logprobs)."""
        super().__init__(temperature, top_p)
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: GGUF model file does not exist")
        llama_kwargs.setdefault("verbose", False)
        self.logits_all = bool(llama_kwargs.get("logits_all", False))
        self.llm = load_llama(
            extra_buffer_types,
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            **llama_kwargs,
        )
        self._lock = threading.Lock()

    # --- the reference's interface ------------------------------------------------------

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
        temperature, top_p = self.sampling(temperature, top_p, emotion_coefficients)
        body: dict[str, Any] = {
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
        }
        if response_format is not None:
            body["response_format"] = response_format
        async with aclosing(self.chat_completions_stream(body)) as chunks:
            async for chunk in chunks:
                text = chunk["choices"][0]["delta"].get("content")
                if text:
                    yield text

    # --- OpenAI's requests ----------------------------------------------------------------

    async def chat_completions(self, body: dict[str, Any]) -> dict[str, Any]:
        kwargs = self._chat_kwargs(body)
        return await self._answer(self.llm.create_chat_completion, kwargs, "messages")

    def chat_completions_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The chunks as llama-cpp-python makes them: the role first, then the text, then
        the finish reason; no usage chunk (see the module's docstring)."""
        kwargs = self._chat_kwargs(body)
        return self._stream(self.llm.create_chat_completion, {**kwargs, "stream": True}, "messages")

    async def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        kwargs, echo = self._completion_kwargs(body)
        answer = await self._answer(self.llm.create_completion, kwargs, "prompt")
        if echo:
            answer["choices"][0]["text"] = echo + answer["choices"][0]["text"]
        return answer

    def completions_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The chunks of the text, then one with the finish reason; no usage chunk."""
        kwargs, echo = self._completion_kwargs(body)
        chunks = self._stream(self.llm.create_completion, {**kwargs, "stream": True}, "prompt")
        return _echoed(chunks, echo) if echo else chunks

    async def aclose(self) -> None:
        def close() -> None:
            with self._lock:
                self.llm.close()

        await asyncio.to_thread(close)

    # --- the body, as llama-cpp-python's keywords ---------------------------------------

    def _chat_kwargs(self, body: Mapping[str, Any]) -> dict[str, Any]:
        _refuse(body, {**_ANY, **_CHAT})
        wants_logprobs = bool(body.get("logprobs")) or bool(body.get("top_logprobs"))
        if wants_logprobs:
            self._require_logprobs("logprobs")
        max_tokens = body.get("max_completion_tokens")
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
        kwargs = self._sampling(body)
        kwargs["messages"] = chat_messages(body.get("messages"))
        kwargs["max_tokens"] = max_tokens
        if wants_logprobs:
            kwargs["logprobs"] = True
            kwargs["top_logprobs"] = body.get("top_logprobs") or 0
        return kwargs

    def _completion_kwargs(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        """The keywords, and the prompt's text when the body asks for it back (echo)."""
        _refuse(body, {**_ANY, **_COMPLETION})
        logprobs = body.get("logprobs")
        if logprobs is not None:
            if body.get("echo"):
                raise _not_capable("echo", "echo with logprobs (prompt logprobs)")
            self._require_logprobs("logprobs")
        prompt = self._prompt(body.get("prompt"))
        kwargs = self._sampling(body)
        kwargs.update(prompt=prompt, max_tokens=body.get("max_tokens"), logprobs=logprobs)
        echo = ""
        if body.get("echo"):
            echo = prompt if isinstance(prompt, str) else self._text(prompt)
        return kwargs, echo

    def _sampling(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The keywords chat and completions share (see the module's docstring)."""
        temperature, top_p = self.sampling(body.get("temperature"), body.get("top_p"), None)
        top_k = body.get("top_k")
        kwargs: dict[str, Any] = {
            "temperature": temperature,
            "top_p": top_p,
            "top_k": 0 if top_k is None or top_k < 0 else top_k,
            "min_p": _given(body, "min_p", 0.0),
            "presence_penalty": _given(body, "presence_penalty", 0.0),
            "frequency_penalty": _given(body, "frequency_penalty", 0.0),
            "repeat_penalty": _given(body, "repetition_penalty", 1.0),
            "stop": body.get("stop") or [],
            "seed": body.get("seed"),
            "logit_bias": self._logit_bias(body.get("logit_bias")),
            "grammar": self._grammar(self.json_format(body.get("response_format"))),
        }
        if body.get("model") is not None:
            kwargs["model"] = body["model"]
        return kwargs

    def _require_logprobs(self, param: str) -> None:
        if not self.logits_all:
            raise _not_capable(param, "the model was loaded without logits_all=True")

    def _prompt(self, prompt: Any) -> str | list[int]:
        """One prompt: a string or token ids (OpenAI's lists of one of them included)."""
        if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
            if len(prompt) > 1:
                raise _not_capable("prompt", "it serves one prompt per request")
            prompt = prompt[0]
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
            n_vocab = self.llm.n_vocab()
            bad = [t for t in prompt if not 0 <= t < n_vocab]
            if bad:
                raise InvalidRequest(
                    f"'prompt' holds token id {bad[0]}, outside the vocabulary [0, {n_vocab})",
                    param="prompt",
                )
            return prompt
        raise InvalidRequest("'prompt' must be a string or a list of token ids", param="prompt")

    def _text(self, token_ids: list[int]) -> str:
        return self.llm.detokenize(token_ids).decode("utf-8", errors="replace")

    def _logit_bias(self, bias: Mapping[str, float] | None) -> dict[int, float] | None:
        if not bias:
            return None
        n_vocab = self.llm.n_vocab()
        out = {}
        for key, value in bias.items():
            try:
                token = int(key)
            except (TypeError, ValueError):
                token = -1
            if not 0 <= token < n_vocab:
                raise InvalidRequest(
                    f"logit_bias keys must be token ids in [0, {n_vocab}), got {key!r}",
                    param="logit_bias",
                )
            out[token] = float(value)
        return out

    def _grammar(self, fmt: Mapping[str, Any] | None):
        """llama.cpp's grammar for a checked `response_format` (see `json_format`)."""
        if fmt is None:
            return None
        from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

        if fmt["type"] == "json_object":
            schema: Any = {"type": "object"}
        else:
            schema = fmt["json_schema"].get("schema")
            schema = {} if schema is None else schema
            if not isinstance(schema, dict):
                raise InvalidRequest(
                    "response_format: the JSON schema must be an object", param="response_format"
                )
            check_schema(schema, "response_format")
            schema = closed_schema(schema)
        try:
            gbnf = json_schema_to_gbnf(json.dumps(schema))
        except Exception as exc:  # the converter asserts, and raises what it meets
            raise InvalidRequest(
                f"response_format: llama.cpp cannot turn this JSON schema into a grammar: {exc}",
                param="response_format",
            ) from exc
        self._check_grammar(gbnf)
        return LlamaGrammar.from_string(gbnf, verbose=False)

    def _check_grammar(self, gbnf: str) -> None:
        """Parse the grammar once: llama.cpp would otherwise add a null sampler (a crash)."""
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
        if not sampler:
            raise InvalidRequest(
                "response_format: llama.cpp cannot parse the grammar of this JSON schema",
                param="response_format",
            )
        llama_cpp.llama_sampler_free(sampler)

    # --- running on the worker thread ---------------------------------------------------

    async def _answer(self, create: Callable[..., Any], kwargs: dict, param: str) -> dict:
        """`create(**kwargs)` under the lock on a worker thread, its failure as a domain
        error. It runs to its end even if the caller stops waiting."""

        def run() -> dict:
            with self._lock:
                return plain(create(**kwargs))

        try:
            return await asyncio.to_thread(run)
        except Exception as exc:
            raise generation_error(exc, param) from exc

    async def _stream(
        self, create: Callable[..., Iterator[dict]], kwargs: dict, param: str
    ) -> AsyncIterator[dict[str, Any]]:
        """The chunks of `create(**kwargs)` (a stream), generated under the lock on a worker
        thread and handed over through a queue; closing this iterator stops the generation
        before its next chunk, and releases the lock."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def put(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop closed: nobody is listening any more
                stop.set()

        def generate() -> None:
            try:
                with self._lock:
                    if stop.is_set():  # the consumer left while this waited for the lock
                        return
                    chunks = create(**kwargs)
                    try:
                        for chunk in chunks:
                            if stop.is_set():
                                break
                            put(plain(chunk))
                    finally:
                        getattr(chunks, "close", lambda: None)()
            except Exception as exc:  # delivered to the consumer
                put(generation_error(exc, param))
            finally:
                put(_DONE)

        loop.run_in_executor(None, generate)
        try:
            while (item := await queue.get()) is not _DONE:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            stop.set()


def chat_messages(messages: Any) -> list[dict[str, Any]]:
    """OpenAI's messages as llama.cpp's chat templates take them: content parts joined into
    text, 'developer' as 'system', no content as ''."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty list", param="messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message:
            raise InvalidRequest(f"messages[{i}] needs a 'role'", param="messages")
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, Mapping) or part.get("type") != "text":
                    kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                    raise _not_capable("messages", f"content parts of type '{kind}'")
                texts.append(part.get("text") or "")
            content = "\n".join(texts)
        role = _TEMPLATE_ROLE.get(message["role"], message["role"])
        out.append({**message, "role": role, "content": content or ""})
    return out


def plain(value: Any) -> Any:
    """`value` with JSON's types only: llama-cpp-python's logprobs are numpy floats."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    item = getattr(value, "item", None)  # a numpy scalar
    return item() if callable(item) and not isinstance(value, str | int | float) else value


def generation_error(exc: Exception, param: str) -> GlassboxError:
    """What llama-cpp-python raised while generating, as a domain error: a prompt that does
    not fit the context, a chat template that refuses the messages, or llama.cpp failing."""
    if isinstance(exc, GlassboxError):
        return exc
    if isinstance(exc, ValueError) and (match := _CONTEXT.search(str(exc))):
        prompt, limit = match.groups()
        return ContextLengthExceeded(
            f"This model's maximum context length is {limit} tokens, but the prompt has "
            f"{prompt} tokens. Shorten the prompt to fewer than {limit} tokens.",
            param=param,
        )
    from jinja2 import TemplateError  # llama-cpp-python's chat templates are jinja2's

    if isinstance(exc, TemplateError):
        return InvalidRequest(
            f"the model's chat template refuses these messages: {exc}", param="messages"
        )
    log.error("llama-cpp failed to generate", exc_info=exc)
    return Unavailable(f"{NAME}: generation failed: {type(exc).__name__}: {exc}")


async def _echoed(chunks: AsyncIterator[dict], prompt: str) -> AsyncIterator[dict]:
    """The stream with the prompt's text before the first chunk's (echo)."""
    first = True
    async with aclosing(chunks):
        async for chunk in chunks:
            if first:
                choice = chunk["choices"][0]
                chunk = {**chunk, "choices": [{**choice, "text": prompt + choice["text"]}]}
                first = False
            yield chunk


def _refuse(body: Mapping[str, Any], refusals: Refusals) -> None:
    for field, (honoured, why) in refusals.items():
        if field in body and not honoured(body[field]):
            raise _not_capable(field, why)


def _not_capable(field: str, why: str) -> NotCapable:
    return NotCapable(
        f"the {NAME} backend cannot honour '{field}': {why}; remove it from the request",
        param=field,
    )


def _given(body: Mapping[str, Any], field: str, default: float) -> float:
    value = body.get(field)
    return default if value is None else value


def load_llama(extra_buffer_types: bool, **kwargs: Any):
    """`llama_cpp.Llama(**kwargs)` with the model parameter `use_extra_bufts` set.

    `Llama` has no argument for it and fills its model parameters from
    `llama_model_default_params()` inside `__init__`, so that function is wrapped for the
    duration of the load (under a lock: loads in other threads see the same wrapper)."""
    import llama_cpp
    import llama_cpp.llama_cpp as low

    with _PARAMS_LOCK:
        defaults = low.llama_model_default_params

        def params():
            p = defaults()
            p.use_extra_bufts = extra_buffer_types
            return p

        low.llama_model_default_params = params
        try:
            return llama_cpp.Llama(**kwargs)
        finally:
            low.llama_model_default_params = defaults
