"""/tasks: classification, entity extraction, question answering with citations and
summarization, each a call of the TaskService (glassbox.structured.tasks)."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from glassbox.api.deps import TasksDep
from glassbox.api.tasks.schemas import (
    AnswerRequest,
    AnswerResponse,
    ClassifyRequest,
    ClassifyResponse,
    ClassifyScore,
    ExtractedEntity,
    ExtractRequest,
    ExtractResponse,
    SummarizeRequest,
    SummarizeResponse,
    SummarySentence,
)

router = APIRouter(prefix="/tasks", tags=["tasks"])


@router.post("/classify", response_model=ClassifyResponse)
async def classify(req: ClassifyRequest, tasks: TasksDep) -> ClassifyResponse:
    result = await tasks.classify(req.text, req.labels, req.multi_label, req.threshold)
    return ClassifyResponse(
        label=result.label,
        labels=result.labels,
        scores=[ClassifyScore(label=s.label, score=s.score) for s in result.scores],
    )


@router.post("/extract", response_model=ExtractResponse)
async def extract(req: ExtractRequest, tasks: TasksDep) -> ExtractResponse:
    types = [(t.name, t.description) for t in req.entity_types]
    result = await tasks.extract(req.text, types)
    return ExtractResponse(entities=[ExtractedEntity(**asdict(e)) for e in result.entities])


@router.post("/answer", response_model=AnswerResponse)
async def answer(req: AnswerRequest, tasks: TasksDep) -> AnswerResponse:
    result = await tasks.answer(req.question, req.passages)
    return AnswerResponse(answer=result.answer, citations=result.citations)


@router.post("/summarize", response_model=SummarizeResponse)
async def summarize(req: SummarizeRequest, tasks: TasksDep) -> SummarizeResponse:
    result = await tasks.summarize(req.text, req.max_words, req.max_sentences, req.focus, req.mode)
    return SummarizeResponse(
        summary=result.text,
        mode=result.mode,
        sentences=[SummarySentence(**asdict(s)) for s in result.sentences],
        finish_reason=result.finish_reason,
    )
