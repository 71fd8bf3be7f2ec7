"""The tasks surface: classify, extract, answer, summarize (glassbox.structured.tasks)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from glassbox.api.common import StrictRequest


class ClassifyRequest(StrictRequest):
    text: str
    labels: list[str]
    multi_label: bool = False
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="multi_label: the labels kept")


class ClassifyScore(BaseModel):
    label: str
    score: float


class ClassifyResponse(BaseModel):
    label: str = Field(description="the best-scoring label")
    labels: list[str] = Field(description="single-label: [label]; multi-label: >= threshold")
    scores: list[ClassifyScore] = Field(description="every label, best first")


class ExtractEntityType(StrictRequest):
    name: str
    description: str = ""


class ExtractRequest(StrictRequest):
    text: str
    entity_types: list[ExtractEntityType]


class ExtractedEntity(BaseModel):
    type: str
    text: str
    start: int = Field(description="text[start:end] is the entity's text")
    end: int


class ExtractResponse(BaseModel):
    entities: list[ExtractedEntity]


class AnswerRequest(StrictRequest):
    question: str
    passages: list[str]


class AnswerResponse(BaseModel):
    answer: str = Field(description="'not in the context' when no passage supports one")
    citations: list[int] = Field(description="indices of the passages cited")


class SummarizeRequest(StrictRequest):
    text: str
    max_words: int | None = Field(None, ge=1)
    max_sentences: int | None = Field(None, ge=1)
    focus: list[str] = Field(default_factory=list, description="keywords to favour")
    mode: Literal["extractive", "abstractive"] = "extractive"


class SummarySentence(BaseModel):
    text: str
    start: int = Field(description="offsets of the sentence in the request's text")
    end: int


class SummarizeResponse(BaseModel):
    summary: str
    mode: Literal["extractive", "abstractive"]
    sentences: list[SummarySentence] = Field(description="extractive: the sentences taken")
    finish_reason: str | None = Field(
        None, description="abstractive: 'stop', or 'length' when its token budget cut it"
    )
