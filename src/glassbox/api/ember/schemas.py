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


class _EmberRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = Field(None, description="The served model name or an alias")


class _EmberSteered(_EmberRequest):
    controller: dict[str, Any] | None = Field(
        None, description="A Variant's `controller.json()`: its edits and scopes"
    )


class EmberRerankRequest(_EmberRequest):
    query: str
    top_k: int = Field(10, ge=1, le=1000)
    feature_ids: list[str]


class EmberNeighborsRequest(_EmberRequest):
    feature_indices: list[int] = Field(min_length=1)
    top_k: int = Field(10, ge=1, le=1000)


class EmberLookupRequest(_EmberRequest):
    indices: list[int]


class EmberAutoEditsRequest(_EmberRequest):
    specification: str


class EmberInspectRequest(_EmberSteered):
    messages: list[EmberMessage] = Field(min_length=1)
    aggregate_by: str = Field("count", description="Ignored: the SDK aggregates client side")
    include_feature_indexes: list[int] | None = None


class EmberContrastRequest(_EmberRequest):
    dataset_1: list[list[EmberMessage]] = Field(min_length=1)
    dataset_2: list[list[EmberMessage]] = Field(min_length=1)
    k_to_add: int = Field(5, ge=1, le=1000)
    k_to_remove: int = Field(5, ge=1, le=1000)


class EmberChatRequest(_EmberSteered):
    messages: list[EmberMessage] = Field(min_length=1)
    stream: bool = False
    max_completion_tokens: int | None = Field(2048, ge=1)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    temperature: float = Field(0.6, ge=0.0, le=2.0)
    stop: str | list[str] | None = None
    seed: int | None = 42


class EmberLogitsRequest(_EmberSteered):
    messages: list[EmberMessage] = Field(min_length=1)
    top_k: int | None = Field(10, ge=1)
    filter_vocabulary: list[str] | None = None


class EmberTokenizeRequest(_EmberRequest):
    messages: list[EmberMessage] = Field(min_length=1)


# --- responses ----------------------------------------------------------------------------


class EmberFeature(BaseModel):
    id: str = Field(description="Dashed lowercase UUID")
    uuid: str = Field(description="The same id (lookup reads this key)")
    label: str
    index_in_sae: int = Field(description="Unique per model, across dictionaries")
    relevance: float = 1.0


class EmberFeaturesResponse(BaseModel):
    features: list[EmberFeature]


class EmberNeighborsResponse(BaseModel):
    neighbors: list[EmberFeature]


class EmberAttribution(BaseModel):
    id: str
    index_in_sae: int
    activation_strength: float


class EmberInspectToken(BaseModel):
    token: str
    attributions: list[EmberAttribution]


class EmberInspectResponse(BaseModel):
    tokens: list[EmberInspectToken]


class EmberContrastResponse(BaseModel):
    dataset_1_features: list[EmberFeature]
    dataset_2_features: list[EmberFeature]


class EmberAutoEditsResponse(BaseModel):
    edits: list[tuple[EmberFeature, float]]


class EmberLogitsResponse(BaseModel):
    logits: dict[str, float]


class EmberTokenOut(BaseModel):
    value: str


class EmberTokenizeResponse(BaseModel):
    tokens: list[EmberTokenOut]


class EmberChatMessageOut(BaseModel):
    role: str = "assistant"
    content: str


class EmberChatChoice(BaseModel):
    index: int = 0
    message: EmberChatMessageOut
    finish_reason: str | None


class EmberChatUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class EmberChatCompletion(BaseModel):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    gf_event_names: list[str] | None = None
    choices: list[EmberChatChoice]
    usage: EmberChatUsage


class EmberChunkDelta(BaseModel):
    role: str = "assistant"
    content: str


class EmberChunkChoice(BaseModel):
    index: int = 0
    delta: EmberChunkDelta
    gf_token_index: int
    finish_reason: str | None = None


class EmberChatChunk(BaseModel):
    object: str = "chat.completion.chunk"
    id: str
    created: int
    model: str
    system_fingerprint: str
    gf_event_names: list[str] | None = None
    choices: list[EmberChunkChoice]
