"""Tables of files, vector stores and their chunks (migration 0005_vector_stores).

`files` are uploads (their bytes live on disk, embeddings/files.py); `vector_stores` and
`vector_store_files` are OpenAI's objects; `chunks` is the chunk store (embeddings/chunks.py)
that the job pipeline writes and vector store search reads: one row per chunk of a document
in a collection, keyed by (owner, collection_id, document_id, position) so that storing a
chunk again replaces it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
from pgvector.sqlalchemy import Vector
from sqlalchemy import JSON, BigInteger, DateTime, Integer, LargeBinary, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

from glassbox.principal import LOCAL_TENANT
from glassbox.store.models import Base, utcnow


class EmbeddingVector(TypeDecorator):
    """A float32 vector of any length: pgvector's `vector` on PostgreSQL, sqlite-vec's
    float32 BLOB elsewhere. No fixed dimension, so vectors of several models share the
    column (a search compares only rows of its own dimension)."""

    impl = LargeBinary
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Vector())
        return dialect.type_descriptor(LargeBinary())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        vector = np.asarray(value, dtype=np.float32)
        return vector if dialect.name == "postgresql" else vector.tobytes()

    def process_result_value(self, value: Any, dialect: Dialect) -> np.ndarray | None:
        if value is None:
            return None
        if dialect.name == "postgresql":
            return np.asarray(value, dtype=np.float32)
        return np.frombuffer(value, dtype=np.float32).copy()


# JSON text on SQLite (read with json_extract), JSONB on PostgreSQL (read with -> and ->>).
Attributes = JSON().with_variant(JSONB(), "postgresql")


class FileRow(Base):
    """An uploaded file of one owner; its bytes are `<files dir>/<owner>/<file_id>`."""

    __tablename__ = "files"

    file_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), server_default=LOCAL_TENANT, index=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class VectorStoreRow(Base):
    """A vector store: its chunks are the rows of `chunks` whose collection_id is its id,
    embedded by `model` (searches embed their query with it too). `meta` is its metadata and
    `chunking` its default chunking strategy, both JSON."""

    __tablename__ = "vector_stores"

    vector_store_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), server_default=LOCAL_TENANT, index=True)
    name: Mapped[str] = mapped_column(String(512), default="")
    description: Mapped[str | None] = mapped_column(Text, default=None)
    model: Mapped[str] = mapped_column(String(128))
    meta: Mapped[str] = mapped_column(Text, default="{}")
    chunking: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_active_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class VectorStoreFileRow(Base):
    """A file attached to a vector store, ingested by the embedding job `job_id`. `status`
    is "in_progress" until the job is seen to end, then the job's end ("completed",
    "failed" with `error_code` and `error_message`, "cancelled"), kept so that a finished
    file never asks the job pipeline again."""

    __tablename__ = "vector_store_files"

    vector_store_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    file_id: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    owner: Mapped[str] = mapped_column(String(128), server_default=LOCAL_TENANT, index=True)
    job_id: Mapped[str | None] = mapped_column(String(64), default=None)
    status: Mapped[str] = mapped_column(String(16), default="in_progress")
    error_code: Mapped[str | None] = mapped_column(String(32), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    attributes: Mapped[str] = mapped_column(Text, default="{}")
    chunking: Mapped[str] = mapped_column(Text)
    usage_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ChunkRow(Base):
    """One stored chunk: its text, where it sits in its document (characters start..end),
    its embedding (`dimensions` long) and its document's attributes (the search filters'
    subject). `writes` counts the puts that wrote it: 1 unless a stage ran twice."""

    __tablename__ = "chunks"

    owner: Mapped[str] = mapped_column(String(128), primary_key=True)
    collection_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    document_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    start_char: Mapped[int] = mapped_column(Integer)
    end_char: Mapped[int] = mapped_column(Integer)
    dimensions: Mapped[int] = mapped_column(Integer)
    embedding: Mapped[np.ndarray] = mapped_column(EmbeddingVector())
    attributes: Mapped[dict[str, Any]] = mapped_column(Attributes, default=dict)
    writes: Mapped[int] = mapped_column(Integer, default=1)
