"""The HTTP contract of beam search from a state (/generate/beam)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, StrictBool, model_validator

from glassbox.api.states.schemas import VariantFields
from glassbox.engine.beam_search import BeamSearchParams
from glassbox.steering.plan import SteeringPlan

MAX_BEAMS = 32  # every beam is a row of each step's batch and holds its own KV block


class BeamSearchRequest(VariantFields):
    state_id: str
    num_beams: int = Field(4, ge=1, le=MAX_BEAMS)
    max_length: int = Field(
        16, ge=1, description="New tokens at most (the state's own are not counted)"
    )
    length_penalty: float = Field(
        1.0, allow_inf_nan=False, description="score = sum of logprobs / length ** this"
    )
    num_beam_groups: int = Field(1, ge=1, description="Diverse beam search: groups of beams")
    diversity_penalty: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="Per earlier group that chose the token"
    )
    no_repeat_ngram_size: int = Field(0, ge=0, description="Ban repeated n-grams (0: off)")
    early_stopping: StrictBool | Literal["never"] = False
    num_return_sequences: int = Field(1, ge=1, description="Beams returned, best first")
    commit: bool = Field(False, description="Store the best beam as a child state")

    @model_validator(mode="after")
    def _check(self) -> BeamSearchRequest:
        self.search_params(None)  # the rules between fields, as a 400 before any work
        return self

    def search_params(self, steering: SteeringPlan | None) -> BeamSearchParams:
        return BeamSearchParams(
            num_beams=self.num_beams,
            max_new_tokens=self.max_length,
            length_penalty=self.length_penalty,
            num_beam_groups=self.num_beam_groups,
            diversity_penalty=self.diversity_penalty,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
            early_stopping=self.early_stopping,
            num_return_sequences=self.num_return_sequences,
            steering=steering,
            keep_kv=self.commit,
        )


class Beam(BaseModel):
    index: int
    text: str
    token_ids: list[int] = Field(description="The new tokens (an ending eos token included)")
    score: float = Field(description="Sum of the tokens' logprobs / length ** length_penalty")
    finish_reason: Literal["stop", "length", "steering_abort"]
    group: int = Field(description="Its beam group (diverse beam search)")


class BeamSearchUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = Field(description="New tokens of the returned beams")


class BeamSearchResult(BaseModel):
    object: Literal["beam_search"] = "beam_search"
    state_id: str
    beams: list[Beam] = Field(description="Best first")
    child_state_id: str | None
    usage: BeamSearchUsage
