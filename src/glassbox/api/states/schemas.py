"""The HTTP contract of KV states and generation from them (/states, /generate/token)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from glassbox.api.common import StrictRequest
from glassbox.api.features.readout import ReadoutFeature, ReadoutOptions
from glassbox.api.openai.schemas import ChatMessage

CheckpointName = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")


class StateConfig(StrictRequest):
    """Sampling defaults of generations from the state (a request's own values win)."""

    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None


class StateCreateRequest(StrictRequest):
    model_id: str | None = Field(None, description="Served model name or alias (default: it)")
    text: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_generation_prompt: bool = Field(True, description="With messages: end ready to answer")
    config: StateConfig = Field(default_factory=StateConfig)

    @model_validator(mode="after")
    def _one_source(self) -> StateCreateRequest:
        if (self.text is None) == (self.messages is None):
            raise ValueError("give exactly one of 'text' and 'messages'")
        if self.text == "":
            raise ValueError("'text' is empty")
        return self


class StateObject(BaseModel):
    object: Literal["state"] = "state"
    id: str
    model: str
    parent_id: str | None
    text: str
    token_ids: list[int]
    num_tokens: int
    config: dict[str, Any]
    checkpoints: dict[str, int]
    metadata: dict[str, Any]
    created: int
    modified: int
    location: Literal["memory", "disk", "tokens"]
    bytes: int = Field(description="Bytes of the state's KV")
    file_bytes: int | None = Field(description="Size of its file on disk, when it has one")


class StateSummary(BaseModel):
    object: Literal["state"] = "state"
    id: str
    parent_id: str | None
    num_tokens: int
    created: int
    modified: int
    location: Literal["memory", "disk", "tokens"]
    bytes: int


class StateList(BaseModel):
    object: Literal["list"] = "list"
    data: list[StateSummary]
    has_more: bool
    last_id: str | None


class StateDeleted(BaseModel):
    object: Literal["state.deleted"] = "state.deleted"
    id: str
    deleted: bool = True


class ForkRequest(StrictRequest):
    token_index: int | None = Field(None, ge=1, description="Keep the first N tokens")


class RollbackRequest(StrictRequest):
    token_index: int | None = Field(None, ge=1)
    checkpoint: str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> RollbackRequest:
        if (self.token_index is None) == (self.checkpoint is None):
            raise ValueError("give exactly one of 'token_index' and 'checkpoint'")
        return self


class CheckpointRequest(StrictRequest):
    name: str = CheckpointName
    token_index: int | None = Field(None, ge=1, description="Default: the whole state")


class MergeRequest(StrictRequest):
    state_ids: list[str] = Field(min_length=2, max_length=16)


class DiffSide(BaseModel):
    state_id: str
    token_ids: list[int]
    text: str


class StateDiff(BaseModel):
    object: Literal["state.diff"] = "state.diff"
    common_ancestor_id: str | None
    common_prefix_tokens: int
    common_text: str
    a: DiffSide
    b: DiffSide


class ExportRequest(StrictRequest):
    name: str | None = Field(None, description="File name in the export directory")


class ExportResult(BaseModel):
    object: Literal["state.export"] = "state.export"
    id: str
    name: str
    bytes: int


class ExportFile(BaseModel):
    name: str
    bytes: int


class ExportList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ExportFile]


class ImportRequest(StrictRequest):
    name: str = Field(description="A file previously exported to the export directory")


class VariantFields(StrictRequest):
    """The variant a generation from a state runs under, if any."""

    variant: dict[str, Any] | None = Field(None, description="Inline variant (Ember JSON)")
    session_id: str | None = None
    variant_id: str | None = None

    @model_validator(mode="after")
    def _one_variant(self) -> VariantFields:
        if self.variant is not None and self.session_id is not None:
            raise ValueError("give either 'variant' or 'session_id', not both")
        if self.variant_id is not None and self.session_id is None:
            raise ValueError("'variant_id' needs 'session_id'")
        return self


class GenerateTokenRequest(VariantFields):
    state_id: str
    max_tokens: int = Field(16, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop_sequences: list[str] = Field(
        default_factory=list, description="At most the server's max_stop_strings (16)"
    )
    stream: bool = False
    commit: bool = Field(False, description="Store prompt + output as a child state")
    logprobs: int | None = Field(None, ge=0, le=20, description="Top alternatives per token")
    readout: ReadoutOptions | None = Field(None, description="Top features per token")

    @model_validator(mode="after")
    def _check(self) -> GenerateTokenRequest:
        if any(s == "" for s in self.stop_sequences):
            raise ValueError("'stop_sequences' entries must not be empty")
        return self


class TokenInfo(BaseModel):
    token_id: int
    token: str
    logprob: float | None = None
    top_logprobs: list[dict[str, Any]] | None = None
    features: list[ReadoutFeature] | None = Field(None, exclude_if=lambda v: v is None)


class GenerationUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


class GenerationResult(BaseModel):
    object: Literal["generation"] = "generation"
    state_id: str
    text: str
    tokens: list[TokenInfo]
    finish_reason: str | None
    child_state_id: str | None
    usage: GenerationUsage
