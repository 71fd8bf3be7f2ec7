"""The HTTP contract of state analysis (/analysis): requests, and responses wrapping the
results of glassbox.states.analysis."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from glassbox.api.common import StrictRequest
from glassbox.states.analysis import LayerCache, TokenScore


class TokenAnalysisResponse(BaseModel):
    object: Literal["analysis.tokens"] = "analysis.tokens"
    state_id: str
    num_tokens: int
    tokens: list[TokenScore] = Field(description="From the second token on")
    mean_logprob: float | None
    perplexity: float | None


class AttentionRequest(StrictRequest):
    layer: int = Field(ge=0, description="Decoder layer, from 0")
    head: int | None = Field(None, ge=0, description="Query head; omitted: mean of all heads")
    threshold: float = Field(0.0, ge=0.0, le=1.0, description="Reported values below it are 0")
    normalized: bool = Field(False, description="Divide each row by its maximum")
    format: Literal["json", "png"] = "json"


class AttentionEntry(BaseModel):
    query: int
    key: int
    weight: float


class AttentionResponse(BaseModel):
    object: Literal["analysis.attention"] = "analysis.attention"
    state_id: str
    layer: int
    head: int | None
    threshold: float
    normalized: bool
    tokens: list[str]
    weights: list[list[float]] = Field(description="[query][key], 0 above the diagonal")
    entries: list[AttentionEntry] = Field(description="The nonzero weights, row by row")


class CacheRequest(StrictRequest):
    layer_range: tuple[int, int] | None = Field(
        None, description="[start, end): layers start..end-1, from 0; omitted: every layer"
    )


class CacheResponse(BaseModel):
    object: Literal["analysis.cache"] = "analysis.cache"
    state_id: str
    layer_range: tuple[int, int]
    num_tokens: int = Field(description="Tokens with KV: all of the state's but its last")
    layers: list[LayerCache]
    total_bytes: int = Field(description="K and V bytes of the layers in layer_range")
