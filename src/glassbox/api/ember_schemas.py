"""Request and response bodies of the Ember-compatible surface (/api/inference/v1/...), field
for field what the `goodfire` 0.3.5 SDK sends and parses (docs/ember_api.md).

Requests ignore unknown fields (the SDK may grow some); responses carry exactly what the SDK
reads plus a few harmless extras (a feature's `uuid` next to its `id`, chat usage).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class EmberMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = Field(None, description="The served model name or an alias")


class _Steered(_Request):
    controller: dict[str, Any] | None = Field(
        None, description="A Variant's `controller.json()`: its edits and scopes"
    )


class RerankRequest(_Request):
    query: str
    top_k: int = Field(10, ge=1, le=1000)
    feature_ids: list[str]


class NeighborsRequest(_Request):
    feature_indices: list[int] = Field(min_length=1)
    top_k: int = Field(10, ge=1, le=1000)


class LookupRequest(_Request):
    indices: list[int]


class AutoEditsRequest(_Request):
    specification: str


class InspectRequest(_Steered):
    messages: list[EmberMessage] = Field(min_length=1)
    aggregate_by: str = Field("count", description="Ignored: the SDK aggregates client side")
    include_feature_indexes: list[int] | None = None


class ContrastRequest(_Request):
    dataset_1: list[list[EmberMessage]] = Field(min_length=1)
    dataset_2: list[list[EmberMessage]] = Field(min_length=1)
    k_to_add: int = Field(5, ge=1, le=1000)
    k_to_remove: int = Field(5, ge=1, le=1000)


class ChatRequest(_Steered):
    messages: list[EmberMessage] = Field(min_length=1)
    stream: bool = False
    max_completion_tokens: int | None = Field(2048, ge=1)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    temperature: float = Field(0.6, ge=0.0, le=2.0)
    stop: str | list[str] | None = None
    seed: int | None = 42


class LogitsRequest(_Steered):
    messages: list[EmberMessage] = Field(min_length=1)
    top_k: int | None = Field(10, ge=1)
    filter_vocabulary: list[str] | None = None


class TokenizeRequest(_Request):
    messages: list[EmberMessage] = Field(min_length=1)


# --- responses ----------------------------------------------------------------------------


class EmberFeature(BaseModel):
    id: str = Field(description="Dashed lowercase UUID")
    uuid: str = Field(description="The same id (lookup reads this key)")
    label: str
    index_in_sae: int = Field(description="Unique per model, across dictionaries")
    relevance: float = 1.0


class FeaturesResponse(BaseModel):
    features: list[EmberFeature]


class NeighborsResponse(BaseModel):
    neighbors: list[EmberFeature]


class Attribution(BaseModel):
    id: str
    index_in_sae: int
    activation_strength: float


class InspectToken(BaseModel):
    token: str
    attributions: list[Attribution]


class InspectResponse(BaseModel):
    tokens: list[InspectToken]


class ContrastResponse(BaseModel):
    dataset_1_features: list[EmberFeature]
    dataset_2_features: list[EmberFeature]


class AutoEditsResponse(BaseModel):
    edits: list[tuple[EmberFeature, float]]


class LogitsResponse(BaseModel):
    logits: dict[str, float]


class TokenOut(BaseModel):
    value: str


class TokenizeResponse(BaseModel):
    tokens: list[TokenOut]


class ChatMessageOut(BaseModel):
    role: str = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: str | None


class ChatUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    gf_event_names: list[str] | None = None
    choices: list[ChatChoice]
    usage: ChatUsage


class ChunkDelta(BaseModel):
    role: str = "assistant"
    content: str


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    gf_token_index: int
    finish_reason: str | None = None


class ChatChunk(BaseModel):
    object: str = "chat.completion.chunk"
    id: str
    created: int
    model: str
    system_fingerprint: str
    gf_event_names: list[str] | None = None
    choices: list[ChunkChoice]
