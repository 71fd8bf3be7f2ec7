"""Tables of the embedding job pipeline (migration 0004_embedding_jobs).

A job's row holds its status and each stage's progress in chunks; its documents wait in
`embedding_job_documents` until the job ends (the chunk store keeps what was made of them).
A batch's work is recorded once per stage in `embedding_job_batches`: a stage that runs a
batch again (after a crash, or a message delivered twice) finds it there and counts nothing
twice. `embedding_quota_use` holds each user's chunks of the day (UTC).
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Date, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from glassbox.store.models import Base, utcnow


class EmbeddingJobRow(Base):
    """One job of one owner. `worker`: the in-process worker running it (None in Redis
    mode, where the stages' messages carry the work)."""

    __tablename__ = "embedding_jobs"
    __table_args__ = (Index("ix_embedding_jobs_status_priority", "status", "priority"),)

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    user_id: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer)
    collection_id: Mapped[str] = mapped_column(String(256))
    media_id: Mapped[str | None] = mapped_column(String(256), default=None)
    model: Mapped[str] = mapped_column(String(256))
    max_tokens: Mapped[int] = mapped_column(Integer)
    overlap_tokens: Mapped[int] = mapped_column(Integer)
    batch_size: Mapped[int] = mapped_column(Integer)
    documents: Mapped[int] = mapped_column(Integer)
    chunks: Mapped[int] = mapped_column(Integer)  # counted at submit: every stage's total
    chunked: Mapped[int] = mapped_column(Integer, default=0)
    embedded: Mapped[int] = mapped_column(Integer, default=0)
    stored: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(128), default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EmbeddingJobDocumentRow(Base):
    """A document of a job, in the job's order (`seq`); `attributes` is JSON."""

    __tablename__ = "embedding_job_documents"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    document_id: Mapped[str] = mapped_column(String(256))
    text: Mapped[str] = mapped_column(Text)
    attributes: Mapped[str] = mapped_column(Text)


class EmbeddingJobBatchRow(Base):
    """Batch `batch` of the job has been through `stage` (its `chunks` counted once)."""

    __tablename__ = "embedding_job_batches"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    stage: Mapped[str] = mapped_column(String(16), primary_key=True)
    batch: Mapped[int] = mapped_column(Integer, primary_key=True)
    chunks: Mapped[int] = mapped_column(Integer)


class EmbeddingQuotaRow(Base):
    """Chunks a user's jobs took on one day (UTC), charged when each job was accepted."""

    __tablename__ = "embedding_quota_use"

    owner: Mapped[str] = mapped_column(String(128), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    chunks: Mapped[int] = mapped_column(Integer)
