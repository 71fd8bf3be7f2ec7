"""Tables, as of the newest Alembic revision in store/migrations/versions/.

`Database` brings every database to that revision at start-up (store/migrate.py). A change
to a table here goes with a new revision; tests/integration/test_migrations.py checks that
the revisions and these classes agree.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from glassbox.principal import LOCAL_TENANT  # rows stored without an owner are the local one's


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(t: datetime) -> datetime:
    """A stored time with its zone: SQLite drops it (the column is UTC)."""
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class VariantRow(Base):
    """One stored variant in one namespace of one owner; `spec` is
    `VariantSpec.model_dump_json()`."""

    __tablename__ = "variants"

    # Primary key order (owner, namespace, variant_id) is the order of `Session.get`'s tuple.
    owner: Mapped[str] = mapped_column(
        String(128), primary_key=True, server_default=LOCAL_TENANT, index=True
    )
    namespace: Mapped[str] = mapped_column(String(128), primary_key=True)
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
    owner: Mapped[str] = mapped_column(String(128), server_default=LOCAL_TENANT, index=True)
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    parent_id: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    num_tokens: Mapped[int] = mapped_column(Integer)
    token_ids: Mapped[bytes] = mapped_column(LargeBinary)
    config: Mapped[str] = mapped_column(Text, default="{}")
    checkpoints: Mapped[str] = mapped_column(Text, default="{}")
    meta: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    modified_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ChatSessionRow(Base):
    """A chat session of one owner: its settings (system prompt, variant, sampling defaults,
    response_format as JSON) and the KV state that holds its conversation so far
    (`state_id`, None until the first reply or once that state is gone)."""

    __tablename__ = "chat_sessions"

    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), server_default=LOCAL_TENANT, index=True)
    user_id: Mapped[str] = mapped_column(String(128), index=True)
    settings: Mapped[str] = mapped_column(Text, default="{}")
    state_id: Mapped[str | None] = mapped_column(String(64), default=None)
    # The position of the first message the model still reads (the context policy dropped
    # the ones before it); the history keeps them all.
    context_start: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The fencing token of the last turn stored (sessions/locks.py): a turn holding a smaller
    # one lost its lock and may not write.
    fence: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # context_policy "summarize": the model's summary of the messages before context_start.
    summary: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ChatMessageRow(Base):
    """One message of a session; `position` orders them (0 = the first)."""

    __tablename__ = "chat_messages"

    message_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(64), index=True)
    position: Mapped[int] = mapped_column(Integer)
    sender: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
