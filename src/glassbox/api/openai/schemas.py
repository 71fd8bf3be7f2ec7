"""The OpenAI contract: chat/completions requests and responses, and the model list.

Requests validate everything that can be checked without the model (ranges, shapes); checks
that need the tokenizer or the context length live in the request path (glassbox.requests).
Fields OpenAI defines that would change the output and that glassbox cannot honour yet are
rejected with a 400 rather than silently ignored; unknown fields are rejected too.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from glassbox.api.common import StrictRequest
from glassbox.api.features.readout import ReadoutOptions, TokenReadout
from glassbox.structured.tools import ToolCall

Role = Literal["system", "user", "assistant", "developer", "tool"]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _only_text(self) -> TextPart:
        if self.type != "text":
            raise ValueError(
                f"content parts of type '{self.type}' are not supported yet; "
                "send text parts ({'type': 'text', 'text': ...}) or a string"
            )
        if self.text is None:
            raise ValueError("a text content part needs a 'text' field")
        return self


class FunctionCallOut(BaseModel):
    name: str
    arguments: str = Field(description="The arguments as JSON text")


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCallOut] | None = None

    @model_validator(mode="after")
    def _check(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only 'assistant' messages carry 'tool_calls'")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs 'tool_call_id'")
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a '{self.role}' message needs 'content'")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text or "" for part in self.content)


_TEMPLATE_ROLE = {"developer": "system"}  # chat templates know 'system', not 'developer'


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """The messages as the request path takes them; an assistant turn's calls as
    `structured.tools.ToolCall`s."""
    out = []
    for m in messages:
        message: dict[str, Any] = {"role": _TEMPLATE_ROLE.get(m.role, m.role), "content": m.text()}
        if m.name:
            message["name"] = m.name
        if m.tool_call_id:
            message["tool_call_id"] = m.tool_call_id
        if m.tool_calls:
            message["tool_calls"] = [
                ToolCall(c.id, c.function.name, c.function.arguments) for c in m.tool_calls
            ]
        out.append(message)
    return out


class StreamOptions(BaseModel):
    include_usage: bool = False


def _check_stop(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else list(value)
    if len(stops) > 4:
        raise ValueError("at most 4 stop sequences are allowed")
    if any(s == "" for s in stops):
        raise ValueError("stop sequences must be non-empty strings")
    return stops


class EmotionalStateIn(BaseModel):
    valence: float = Field(ge=-1.0, le=1.0)
    arousal: float = Field(ge=-1.0, le=1.0)


GUIDED = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")


class _SamplingFields(StrictRequest):
    """Fields shared by chat and completions (OpenAI's plus vLLM's extras)."""

    model: str | None = Field(None, description="The served model name or an alias")
    n: int = Field(1, ge=1, description="Choices; at most the server's max_choices (16)")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # vLLM-style extras
    top_k: int = Field(0, ge=-1, description="0 or -1: off")
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=2.0)
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    # glassbox: steer with an inline variant (Ember's Variant.json()) or a stored one
    variant: dict[str, Any] | None = None
    session_id: str | None = None
    variant_id: str | None = None
    # glassbox (Elpis style): blend named steering vectors, or map an emotional state onto
    # the four quadrant emotions; added to the variant's edits
    emotion_coefficients: dict[str, float] | None = None
    emotional_state: EmotionalStateIn | None = None
    # vLLM-style constraints (at most one, and not with a JSON response_format)
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = Field(None, min_length=1)
    guided_grammar: str | None = Field(None, description="A Lark grammar (llguidance's dialect)")

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        _check_stop(value)
        return value

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias_keys(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not key.lstrip("-").isdigit():
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
        return value

    @model_validator(mode="after")
    def _stream_options(self) -> _SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise ValueError("'stream_options' is only allowed when 'stream' is true")
        if self.variant is not None and self.session_id is not None:
            raise ValueError("give 'variant' (inline) or 'session_id' (stored), not both")
        if self.variant_id is not None and self.session_id is None:
            raise ValueError("'variant_id' needs 'session_id'")
        if self.emotion_coefficients is not None and self.emotional_state is not None:
            raise ValueError("give 'emotion_coefficients' or 'emotional_state', not both")
        guided = [n for n in GUIDED if getattr(self, n) is not None]
        if len(guided) > 1:
            raise ValueError(f"give one guided_* constraint, not {' and '.join(guided)}")
        response_format = getattr(self, "response_format", None)
        if guided and response_format is not None and response_format.type != "text":
            raise ValueError(f"give 'response_format' or '{guided[0]}', not both")
        return self

    def guided(self) -> tuple[str, Any] | None:
        """The guided_* constraint set: (field name, value)."""
        for name in GUIDED:
            value = getattr(self, name)
            if value is not None:
                return name, value
        return None

    @property
    def stop_list(self) -> list[str]:
        return _check_stop(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class JsonSchemaFormat(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(populate_by_name=True)


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _check(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type 'json_schema' needs 'json_schema'")
        if self.type != "json_schema" and self.json_schema is not None:
            raise ValueError("'json_schema' is only allowed with type 'json_schema'")
        return self


class FunctionDef(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(BaseModel):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    add_generation_prompt: bool = True
    # Accepted, no effect on the output.
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    response_format: ResponseFormat | None = None
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    # glassbox: each generated token's top features, in `choice.readout` (and each chunk's)
    readout: ReadoutOptions | None = None
    # Defined by OpenAI, not supported: rejected when set (see unsupported()).
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    web_search_options: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and self.top_logprobs > 0 and not self.logprobs:
            raise ValueError("'top_logprobs' needs 'logprobs': true")
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            if self.max_tokens != self.max_completion_tokens:
                raise ValueError("give 'max_completion_tokens' or 'max_tokens', not both")
        if self.tool_choice not in (None, "none") and not self.tools:
            raise ValueError("'tool_choice' needs 'tools'")
        if self.tools and self.tool_choice not in (None, "none"):
            if self.response_format is not None and self.response_format.type != "text":
                raise ValueError("give 'response_format' or tool calls, not both")
            if self.guided() is not None:
                raise ValueError("give a guided_* constraint or tool calls, not both")
        return self

    @property
    def tool_choice_name(self) -> str:
        """'none', 'auto', 'required' or the named function (OpenAI's default: 'auto' when
        tools are given, else 'none')."""
        choice = self.tool_choice
        if choice is None:
            return "auto" if self.tools else "none"
        return choice if isinstance(choice, str) else choice.function.name

    def unsupported(self) -> tuple[str, str | None] | None:
        """The first set field that glassbox cannot honour yet, with a hint."""
        if self.functions:
            return "functions", None
        if self.function_call not in (None, "none", "auto"):
            return "function_call", None
        if self.modalities not in (None, ["text"]):
            return "modalities", "only ['text']"
        for name in ("audio", "prediction", "reasoning_effort", "web_search_options"):
            if getattr(self, name) is not None:
                return name, None
        return None

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


PromptInput = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(_SamplingFields):
    prompt: PromptInput
    response_format: ResponseFormat | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    best_of: int | None = Field(None, ge=1, le=16)
    suffix: str | None = None
    # glassbox: each generated token's top features, in `choice.readout` (and each chunk's)
    readout: ReadoutOptions | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: PromptInput) -> PromptInput:
        if isinstance(value, list):
            if not value:
                raise ValueError("the prompt list is empty")
            if any(isinstance(p, list) and not p for p in value):
                raise ValueError("a token-id prompt is empty")
        return value

    def unsupported(self) -> tuple[str, str | None] | None:
        if self.suffix:
            return "suffix", None
        if self.best_of is not None and self.best_of > self.n:
            return "best_of", "best_of greater than n"
        if self.echo and self.logprobs is not None:
            return "echo", "echo together with logprobs (prompt logprobs)"
        return None

    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list of prompts: each a string or a list of token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


# --- responses ----------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCallOut] | None = None


# glassbox's per-token feature readout, beside logprobs; absent unless the request asked.
Readout = Annotated[list[TokenReadout] | None, Field(exclude_if=lambda v: v is None)]


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    readout: Readout = None
    finish_reason: str | None


def _now() -> int:
    return int(time.time())


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    readout: Readout = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class LegacyLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: LegacyLogprobs | None = None
    readout: Readout = None
    finish_reason: str | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "glassbox"
    root: str | None = None
    max_model_len: int | None = None
    backend: str = Field(
        "local",
        description="What serves it: 'local' (glassbox's engine), 'openai-upstream', 'llama-cpp'",
    )
    capabilities: list[str] = Field(
        default_factory=list,
        description="What it can do beyond OpenAI's API: steering, features, states, tokenize",
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
