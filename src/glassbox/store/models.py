"""Tables. `Database` creates them with `metadata.create_all` at startup, which only adds
missing tables and never alters one. The first change to an existing table's shape is the
point to add Alembic (an environment with `Base.metadata` as `target_metadata`, this
schema as its baseline revision) and to run its migrations at startup instead."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class VariantRow(Base):
    """One stored variant of one session; `spec` is `VariantSpec.model_dump_json()`."""

    __tablename__ = "variants"

    session_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    variant_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    spec: Mapped[str] = mapped_column(Text)
    parent_variant_id: Mapped[str | None] = mapped_column(String(128), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class StateRow(Base):
    """A KV state's record: its tokens (int32, little-endian), config, checkpoints and place
    in the tree. The KV itself lives in the engine's pool or in the state's file."""

    __tablename__ = "states"

    state_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    parent_id: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    num_tokens: Mapped[int] = mapped_column(Integer)
    token_ids: Mapped[bytes] = mapped_column(LargeBinary)
    config: Mapped[str] = mapped_column(Text, default="{}")
    checkpoints: Mapped[str] = mapped_column(Text, default="{}")
    meta: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    modified_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
