"""Bring a database's schema to the newest Alembic revision (the scripts in migrations/).

A database from before Alembic (glassbox's tables, no `alembic_version`) is upgraded like
an empty one: the baseline revision, the schema `create_all` made then, creates only the
tables it lacks, and the later revisions change them in place.
A new revision: `alembic.command.revision(alembic_config(connection), message,
autogenerate=True)` on a connection to a database at head.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine

MIGRATIONS = Path(__file__).with_name("migrations")
BASELINE = "0001_baseline"


def alembic_config(connection: Connection) -> Config:
    """Alembic's configuration, built in code: migrations/env.py runs on `connection`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision."""
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def current(url_or_engine: str | Engine) -> str | None:
    """The database's revision; None for a database that Alembic has not touched."""
    with _connection(url_or_engine, begin=False) as conn:
        return MigrationContext.configure(conn).get_current_revision()


# pg_advisory_xact_lock's key for migrating: any fixed number, the same in every process.
MIGRATION_LOCK = 0x676C617373626F78  # "glassbox"


def upgrade(url_or_engine: str | Engine) -> None:
    """Migrate the database to head (in one transaction on PostgreSQL; SQLite's driver runs
    DDL outside of one). At head, reading the database's revision is all it does.

    On PostgreSQL the transaction first takes an advisory lock: server processes that start
    together on a new database migrate it one after the other (the first to head, the others
    then find it there), instead of all creating the same tables at once."""
    with _connection(url_or_engine, begin=True) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        revision = MigrationContext.configure(conn).get_current_revision()
        if revision == head():
            return
        command.upgrade(alembic_config(conn), "head")


@contextmanager
def _connection(url_or_engine: str | Engine, begin: bool) -> Iterator[Connection]:
    """A connection (in a transaction if `begin`); an engine made here from a URL is
    disposed of afterwards."""
    engine = url_or_engine if isinstance(url_or_engine, Engine) else create_engine(url_or_engine)
    try:
        with engine.begin() if begin else engine.connect() as conn:
            yield conn
    finally:
        if engine is not url_or_engine:
            engine.dispose()
