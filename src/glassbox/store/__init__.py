"""Durable state in SQL: SQLite by default, PostgreSQL by URL (SQLAlchemy 2)."""

from glassbox.store.db import Database
from glassbox.store.models import LOCAL_OWNER, Base, StateRow, VariantRow

__all__ = ["LOCAL_OWNER", "Base", "Database", "StateRow", "VariantRow"]
