"""`/api/v1/embeddings/jobs`: documents chunked, embedded and stored by the job pipeline
(glassbox/embeddings/jobs.py), the reference's job API.

    POST   /api/v1/embeddings/jobs           202, the job (429 with Retry-After over quota)
    GET    /api/v1/embeddings/jobs           the caller's jobs, newest first
    GET    /api/v1/embeddings/jobs/{job_id}  status and per-stage progress
    DELETE /api/v1/embeddings/jobs/{job_id}  cancel (what was stored stays)
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from glassbox.api.deps import PrincipalDep
from glassbox.embeddings.jobs import (
    MAX_DOCUMENTS,
    MAX_ID_LENGTH,
    ChunkingOptions,
    Job,
    JobDocument,
    JobService,
    Status,
)

router = APIRouter(prefix="/api/v1/embeddings/jobs", tags=["embeddings"])


def job_service(request: Request) -> JobService:
    return request.app.state.jobs


JobsDep = Annotated[JobService, Depends(job_service)]
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Id | None = Field(None, description="The document's id (default: its index)")
    text: str = Field(min_length=1)
    attributes: dict[str, Any] = Field(
        default_factory=dict, description="Stored with each chunk (what searches filter on)"
    )


class ChunkingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(ge=16, description="Tokens per chunk, at most the model's budget")
    overlap_tokens: int | None = Field(
        None, ge=0, description="Tokens consecutive chunks share (default: max_tokens / 4)"
    )


class CreateJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Id = Field(description="Whose daily quota the chunks count against")
    media_id: Id | int | None = None
    content: str | None = Field(None, min_length=1, description="One text (or 'documents')")
    documents: list[DocumentIn] | None = Field(None, min_length=1, max_length=MAX_DOCUMENTS)
    collection_id: Id | None = Field(
        None, description="Where the chunks are stored (default: media:<media_id>, or new)"
    )
    priority: int = Field(0, ge=-100, le=100, description="Higher runs first")
    chunking: ChunkingIn | None = Field(
        None, description="Default: the model's whole budget, a quarter of it shared"
    )
    model: str | None = Field(None, description="An embedding model (default: the server's)")

    @model_validator(mode="after")
    def _one_input(self) -> CreateJobRequest:
        if (self.content is None) == (self.documents is None):
            raise ValueError("send either 'content' (one text) or 'documents' (a list)")
        return self


class StageOut(BaseModel):
    done: int
    total: int


class ChunkingOut(BaseModel):
    max_tokens: int
    overlap_tokens: int


class JobOut(BaseModel):
    object: Literal["embedding.job"] = "embedding.job"
    job_id: str
    user_id: str
    status: Status
    priority: int
    collection_id: str
    media_id: str | None
    model: str
    chunking: ChunkingOut
    stages: dict[str, StageOut] = Field(description="chunking, embedding, storage: chunks")
    error: str | None
    created_at: datetime
    updated_at: datetime


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobOut]
    has_more: bool


def job_out(job: Job) -> JobOut:
    return JobOut(
        job_id=job.job_id, user_id=job.user_id, status=job.status, priority=job.priority,
        collection_id=job.collection_id, media_id=job.media_id, model=job.model,
        chunking=ChunkingOut(max_tokens=job.chunking.max_tokens,
                             overlap_tokens=job.chunking.overlap_tokens),
        stages={k: StageOut(done=s.done, total=s.total) for k, s in job.stages.items()},
        error=job.error, created_at=job.created_at, updated_at=job.updated_at,
    )  # fmt: skip


def _documents(req: CreateJobRequest, media_id: str | None) -> list[JobDocument]:
    if req.content is not None:
        return [JobDocument(media_id or "0", req.content)]
    return [
        JobDocument(d.id if d.id is not None else str(i), d.text, d.attributes)
        for i, d in enumerate(req.documents or [])
    ]


@router.post("", status_code=202, response_model=JobOut)
async def create_job(req: CreateJobRequest, jobs: JobsDep, principal: PrincipalDep) -> JobOut:
    media_id = str(req.media_id) if req.media_id is not None else None
    collection_id = req.collection_id or (
        f"media:{media_id}" if media_id is not None else f"col_{uuid.uuid4().hex}"
    )
    chunking = None
    if req.chunking is not None:
        c = req.chunking
        overlap = c.overlap_tokens if c.overlap_tokens is not None else c.max_tokens // 4
        chunking = ChunkingOptions(c.max_tokens, overlap)
    job = await jobs.submit(
        principal, user_id=req.user_id, documents=_documents(req, media_id),
        collection_id=collection_id, priority=req.priority, chunking=chunking,
        media_id=media_id, model=req.model,
    )  # fmt: skip
    return job_out(job)


@router.get("", response_model=JobList)
async def list_jobs(
    jobs: JobsDep,
    principal: PrincipalDep,
    user_id: Annotated[str | None, Query(max_length=MAX_ID_LENGTH)] = None,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(description="The last job id of the page before")] = None,
) -> JobList:
    found, more = await jobs.list(principal, user_id=user_id, status=status, limit=limit,
                                  after=after)  # fmt: skip
    return JobList(data=[job_out(j) for j in found], has_more=more)


@router.get("/{job_id}", response_model=JobOut)
async def get_job(job_id: str, jobs: JobsDep, principal: PrincipalDep) -> JobOut:
    return job_out(await jobs.get(principal, job_id))


@router.delete("/{job_id}", response_model=JobOut)
async def cancel_job(job_id: str, jobs: JobsDep, principal: PrincipalDep) -> JobOut:
    return job_out(await jobs.cancel(principal, job_id))
