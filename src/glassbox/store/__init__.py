"""Durable state in SQL: SQLite by default, PostgreSQL by URL (SQLAlchemy 2)."""

from glassbox.store.db import Database
from glassbox.store.models import Base, StateRow, VariantRow

__all__ = ["Base", "Database", "StateRow", "VariantRow"]
