"""Durable state in SQL: SQLite by default, PostgreSQL by URL (SQLAlchemy 2)."""

from glassbox.store import api_keys, embedding_jobs, vector_stores  # noqa: F401  (their tables)
from glassbox.store.db import Database
from glassbox.store.models import Base, StateRow, VariantRow

__all__ = ["Base", "Database", "StateRow", "VariantRow"]
