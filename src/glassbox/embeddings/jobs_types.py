"""What the job pipeline's modules share: a job as callers see it, its documents, the stages,
and the quota error. `glassbox.embeddings.jobs` re-exports the public ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from glassbox.embeddings.chunking import ChunkingOptions
from glassbox.errors import GlassboxError

Status = Literal["queued", "running", "completed", "failed", "cancelled"]
FINISHED: tuple[Status, ...] = ("completed", "failed", "cancelled")
# The stages in their order; each one's progress counts chunks.
STAGES = ("chunking", "embedding", "storage")


@dataclass(frozen=True)
class JobDocument:
    """A text to chunk, embed and store; its chunks are stored under `document_id` with these
    attributes (what vector store searches filter on)."""

    document_id: str
    text: str
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageProgress:
    done: int
    total: int


@dataclass(frozen=True)
class Job:
    job_id: str
    owner: str
    user_id: str
    status: Status
    priority: int
    collection_id: str
    media_id: str | None
    model: str
    chunking: ChunkingOptions
    stages: dict[str, StageProgress]
    error: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class JobSpec:
    """What a worker needs of a job to run its stages."""

    job_id: str
    owner: str
    status: Status
    priority: int
    collection_id: str
    model: str
    chunking: ChunkingOptions
    batch_size: int
    chunks: int  # counted at submit


class QuotaExceeded(GlassboxError):
    """The user's chunks today plus this job's would pass the daily quota of the user's
    tier. `retry_after`: seconds until the quota resets (00:00 UTC)."""

    default_code = "quota_exceeded"

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class ChunkCountChanged(Exception):
    """A worker's chunks of a job are not the ones counted at submit: the tokenizer that
    chunks them differs from the one that counted (another model version on a worker). Not
    a domain error: no request sees it, the job fails with its message."""
