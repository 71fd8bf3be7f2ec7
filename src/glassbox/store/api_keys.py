"""The table of API keys (migration 0006_api_keys); the service is glassbox.auth.keys.

A row never holds the key: only `digest`, the HMAC-SHA256 of the whole key under the server's
secret, and `prefix`, the first characters of its random part, which `keys list` shows and
verification looks rows up by. `scopes` is space-separated (e.g. "read" or "admin"). The
key's own rate limits (migration 0007_key_limits) are NULL where the default applies.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from glassbox.store.models import Base, utcnow


class ApiKeyRow(Base):
    """One API key of one tenant (`owner`): the principal its requests run as."""

    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    digest: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer, default=None)
    tokens_per_minute: Mapped[int | None] = mapped_column(Integer, default=None)
