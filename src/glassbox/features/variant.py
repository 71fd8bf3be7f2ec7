"""A variant: a base model plus feature edits and conditional scopes.

This is glassbox's own schema for what a request steers with. Its JSON is the same as the
`goodfire` SDK's `Variant.json()` (conversion and round-trip live in features/ember_json.py),
so a variant written by either side loads in the other.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

EditMode = Literal["nudge", "pin", "mul", "ablate"]
Operator = Literal["==", "!=", ">", "<", ">=", "<="]


class FeatureRef(BaseModel):
    uuid: str = Field(description="The feature's id (32 hex characters)")
    label: str = ""
    index_in_sae: int = 0


class Edit(BaseModel):
    feature: FeatureRef
    mode: EditMode = "nudge"
    value: float = 0.0


class Condition(BaseModel):
    """True on a token where the feature's activation `operator` value."""

    feature: FeatureRef
    operator: Operator
    value: float


class ConditionGroup(BaseModel):
    """Conditions joined by one operator; groups nest."""

    join: Literal["&", "|"] = "&"
    items: list[Condition | ConditionGroup]


class Scope(BaseModel):
    """While `when` holds on a token: apply `edits` there (set_when), or, with `abort`,
    stop the generation with an error (abort_when)."""

    when: ConditionGroup
    edits: list[Edit] = Field(default_factory=list)
    abort: bool = False


class VariantSpec(BaseModel):
    base_model: str
    edits: list[Edit] = Field(default_factory=list)
    scopes: list[Scope] = Field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.edits and not self.scopes

    @property
    def edit_count(self) -> int:
        """Every edit, unconditional or in a scope: what each generated token pays for."""
        return len(self.edits) + sum(len(scope.edits) for scope in self.scopes)
