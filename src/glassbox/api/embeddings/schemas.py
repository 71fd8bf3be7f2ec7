"""OpenAI's embeddings contract (`POST /v1/embeddings`), with glassbox's dimension policy."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from glassbox.api.common import StrictRequest


class EmbeddingRequest(StrictRequest):
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="A text, texts, token ids, or lists of token ids (decoded with the "
        "model's tokenizer)"
    )
    model: str | None = Field(None, description="Default: the bundled all-MiniLM-L6-v2")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: each vector's float32 little-endian bytes"
    )
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None
    dimension_policy: Literal["reduce", "pad", "ignore"] | None = Field(
        None,
        description="When 'dimensions' differs from the model's: reduce (truncate and "
        "renormalize), pad (zeros when asking for more), ignore (the model's own); default: "
        "the server's GLASSBOX_EMBEDDINGS_DIMENSION_POLICY",
    )


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingObject(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingObject]
    model: str
    usage: EmbeddingUsage


class CacheStats(BaseModel):
    hits: int
    misses: int
    size: int
    evictions: int
    max_entries: int
    extra: dict[str, Any] = Field(default_factory=dict, description="Redis layer, expiries")
