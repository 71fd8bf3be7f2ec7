"""The system surface: vLLM-compatible tokenize/detokenize and /health."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from glassbox.api.common import StrictRequest
from glassbox.api.openai.schemas import ChatMessage
from glassbox.features.service import Stage


class TokenizeRequest(StrictRequest):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        if self.messages is not None and not self.messages:
            raise ValueError("'messages' is empty")
        return self


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeRequest(StrictRequest):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


class FeaturesReadiness(BaseModel):
    """The feature dictionaries and search index: `ready` once built (features requests then
    answer without waiting); `stage` is where their build is (pending, dictionaries,
    encoder, index, ready, failed)."""

    ready: bool
    stage: Stage


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
    running: int
    waiting: int
    kv_blocks_used: int
    kv_blocks_total: int
    features: FeaturesReadiness
    components: dict[str, Any] = Field(
        default_factory=dict,
        description="database and redis ({ok, error}), embeddings (model, cache, each "
        "provider's circuit), jobs (workers, queues)",
    )


class Check(BaseModel):
    """One part /health/ready waits for: `ok`, or why not in `error`."""

    ok: bool
    error: str | None = None


class Readiness(BaseModel):
    """Whether to send this server traffic: `ready` when every check is ok (then 200, else
    503). `checks`: model (the engine serves), features (dictionaries and search index built;
    ok at once when they are not warmed at start-up), database, redis (when configured)."""

    ready: bool
    checks: dict[str, Check]
