"""OpenAI's Files and Vector Stores objects and requests, as the `openai` package reads and
sends them (openai/types/file_object.py, vector_store.py, vector_stores/, ...)."""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field, model_validator

from glassbox.api.common import StrictRequest

T = TypeVar("T")
AttributeValue = str | bool | int | float


def _check_pairs(pairs: dict[str, Any] | None, what: str, strings_only: bool) -> None:
    """OpenAI's limits on metadata and attributes: 16 pairs, keys of 64 characters, string
    values of 512."""
    if pairs is None:
        return
    if len(pairs) > 16:
        raise ValueError(f"{what} holds at most 16 pairs, got {len(pairs)}")
    for key, value in pairs.items():
        if len(key) > 64:
            raise ValueError(f"{what} keys are at most 64 characters: {key[:20]!r}...")
        if strings_only and not isinstance(value, str):
            raise ValueError(f"{what} values are strings: {key!r} is {value!r}")
        if isinstance(value, str) and len(value) > 512:
            raise ValueError(f"{what} values are at most 512 characters: {key!r}")


# --- files --------------------------------------------------------------------------------


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class ListPage(BaseModel, Generic[T]):
    """OpenAI's cursor page: pass `last_id` as `after` for the next one."""

    object: Literal["list"] = "list"
    data: list[T]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


# --- vector stores ------------------------------------------------------------------------


class StaticChunkingParams(StrictRequest):
    max_chunk_size_tokens: int = Field(ge=100, le=4096)
    chunk_overlap_tokens: int = Field(ge=0)

    @model_validator(mode="after")
    def _overlap_at_most_half(self) -> StaticChunkingParams:
        if self.chunk_overlap_tokens > self.max_chunk_size_tokens // 2:
            raise ValueError("chunk_overlap_tokens must not exceed half of max_chunk_size_tokens")
        return self


class AutoChunking(StrictRequest):
    type: Literal["auto"]


class StaticChunking(StrictRequest):
    type: Literal["static"]
    static: StaticChunkingParams


ChunkingStrategy = Annotated[AutoChunking | StaticChunking, Field(discriminator="type")]


class CreateVectorStoreRequest(StrictRequest):
    name: str | None = Field(None, max_length=512)
    description: str | None = None
    file_ids: list[str] = Field(default_factory=list, max_length=500)
    chunking_strategy: ChunkingStrategy | None = Field(
        None,
        description="auto: the embedding model's whole window per chunk, a quarter shared; "
        "static: max_chunk_size_tokens at most what the model reads",
    )
    metadata: dict[str, str] | None = None
    expires_after: dict[str, Any] | None = Field(None, description="Not supported: refused")

    @model_validator(mode="after")
    def _limits(self) -> CreateVectorStoreRequest:
        _check_pairs(self.metadata, "metadata", strings_only=True)
        return self


class ModifyVectorStoreRequest(StrictRequest):
    name: str | None = Field(None, max_length=512)
    metadata: dict[str, str] | None = None
    expires_after: dict[str, Any] | None = Field(None, description="Not supported: refused")

    @model_validator(mode="after")
    def _limits(self) -> ModifyVectorStoreRequest:
        _check_pairs(self.metadata, "metadata", strings_only=True)
        return self


class FileCounts(BaseModel):
    in_progress: int
    completed: int
    failed: int
    cancelled: int
    total: int


class VectorStoreObject(BaseModel):
    id: str
    object: Literal["vector_store"] = "vector_store"
    created_at: int
    name: str
    description: str | None = None
    usage_bytes: int
    file_counts: FileCounts
    status: Literal["expired", "in_progress", "completed"]
    expires_after: dict[str, Any] | None = None
    expires_at: int | None = None
    last_active_at: int | None
    metadata: dict[str, str]


class VectorStoreDeleted(BaseModel):
    id: str
    object: Literal["vector_store.deleted"] = "vector_store.deleted"
    deleted: bool = True


class CreateVectorStoreFileRequest(StrictRequest):
    file_id: str
    attributes: dict[str, AttributeValue] | None = None
    chunking_strategy: ChunkingStrategy | None = None

    @model_validator(mode="after")
    def _limits(self) -> CreateVectorStoreFileRequest:
        _check_pairs(self.attributes, "attributes", strings_only=False)
        return self


class UpdateVectorStoreFileRequest(StrictRequest):
    attributes: dict[str, AttributeValue] | None

    @model_validator(mode="after")
    def _limits(self) -> UpdateVectorStoreFileRequest:
        _check_pairs(self.attributes, "attributes", strings_only=False)
        return self


class LastError(BaseModel):
    code: Literal["server_error", "unsupported_file", "invalid_file"]
    message: str


class VectorStoreFileObject(BaseModel):
    id: str
    object: Literal["vector_store.file"] = "vector_store.file"
    usage_bytes: int
    created_at: int
    vector_store_id: str
    status: Literal["in_progress", "completed", "cancelled", "failed"]
    last_error: LastError | None
    attributes: dict[str, AttributeValue]
    chunking_strategy: dict[str, Any] = Field(
        description='{"type": "static", "static": {max_chunk_size_tokens, chunk_overlap_tokens}}'
        ": the chunking the file's ingestion used (auto resolved to its values)"
    )


class VectorStoreFileDeleted(BaseModel):
    id: str
    object: Literal["vector_store.file.deleted"] = "vector_store.file.deleted"
    deleted: bool = True


class TextContent(BaseModel):
    type: Literal["text"] = "text"
    text: str


class FileContentPage(BaseModel):
    object: Literal["vector_store.file_content.page"] = "vector_store.file_content.page"
    data: list[TextContent]
    has_more: bool = False
    next_page: str | None = None


# --- search -------------------------------------------------------------------------------


class RankingOptions(StrictRequest):
    ranker: Literal["none", "auto", "default-2024-11-15"] = Field(
        "auto", description="Accepted; results are ranked by cosine similarity whatever it is"
    )
    score_threshold: float = Field(0.0, ge=0.0, le=1.0)


class SearchRequest(StrictRequest):
    query: str | list[str] = Field(
        description="A query, or several: a chunk's score is its best against any of them"
    )
    filters: dict[str, Any] | None = Field(
        None,
        description="OpenAI's attribute filter: {type: eq|ne|gt|gte|lt|lte|in|nin, key, "
        "value} or {type: and|or, filters: [...]}",
    )
    max_num_results: int = Field(10, ge=1, le=50)
    ranking_options: RankingOptions | None = None
    rewrite_query: bool = Field(False, description="Accepted and ignored: queries are used as is")

    @model_validator(mode="after")
    def _some_query(self) -> SearchRequest:
        queries = [self.query] if isinstance(self.query, str) else self.query
        if not queries or not all(q.strip() for q in queries):
            raise ValueError("query must be a non-empty string or a list of them")
        return self


class SearchResult(BaseModel):
    file_id: str
    filename: str
    score: float
    attributes: dict[str, AttributeValue]
    content: list[TextContent]


class SearchResultsPage(BaseModel):
    object: Literal["vector_store.search_results.page"] = "vector_store.search_results.page"
    search_query: list[str]
    data: list[SearchResult]
    has_more: bool = False
    next_page: str | None = None
