"""The contract of glassbox's own feature and variant routes (/features, /variants)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from glassbox.api.common import StrictRequest
from glassbox.api.openai.schemas import ChatMessage

TopK = Annotated[int, Field(ge=1, le=1000)]


class FeatureSearchRequest(StrictRequest):
    query: str = Field(min_length=1)
    session_id: str
    variant_id: str | None = Field(None, description="Default: the namespace's 'default'")
    top_k: TopK = 20


class FeatureActivation(BaseModel):
    """A search hit; `activation` is the variant's current value for it (0 when unset)."""

    uuid: str
    label: str
    index_in_sae: int
    score: float
    activation: float


class FeatureInspectRequest(StrictRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    session_id: str
    variant_id: str | None = None
    top_k: TopK = 20
    aggregate_by: Literal["frequency", "mean", "max", "sum"] = "frequency"
    include_matrix: bool = False


class InspectedFeature(BaseModel):
    uuid: str
    label: str
    index_in_sae: int
    activation: float  # aggregated over tokens by `aggregate_by`


class FeatureInspection(BaseModel):
    tokens: list[str]
    token_ids: list[int]
    features: list[InspectedFeature]
    matrix: list[list[float]] | None = Field(
        None, description="Per token (rows) the activation of each listed feature (columns)"
    )


class FeatureSteerRequest(StrictRequest):
    session_id: str
    variant_id: str | None = None
    label: str | None = Field(None, min_length=1)
    feature_id: str | None = None
    value: float | None = Field(None, description="null clears the feature's edit")
    mode: Literal["nudge", "pin", "mul", "ablate", "clear"] = "nudge"

    @model_validator(mode="after")
    def _one_feature(self) -> FeatureSteerRequest:
        if (self.label is None) == (self.feature_id is None):
            raise ValueError("give exactly one of 'label' or 'feature_id'")
        return self


class ModifiedFeatures(BaseModel):
    session_id: str
    variant_id: str
    edits: list[dict[str, Any]] = Field(description="The edits as in Ember's Variant.json()")


class VariantCreateRequest(StrictRequest):
    session_id: str
    variant_id: str
    base_variant_id: str | None = Field(None, description="Copy this variant's edits")
    variant: dict[str, Any] | None = Field(None, description="Ember's Variant.json()")


class VariantReplaceRequest(StrictRequest):
    variant: dict[str, Any] = Field(description="Ember's Variant.json()")


class VariantObject(BaseModel):
    object: Literal["variant"] = "variant"
    session_id: str
    variant_id: str
    parent_variant_id: str | None
    created_at: int
    updated_at: int
    variant: dict[str, Any] = Field(description="Ember's Variant.json()")


class VariantList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VariantObject]


class VariantDeleted(BaseModel):
    object: Literal["variant.deleted"] = "variant.deleted"
    session_id: str
    variant_id: str
    deleted: bool = True
