"""`Database(url)`: an SQLAlchemy engine and session factory over one URL.

The default is an SQLite file in the cache directory; any SQLAlchemy URL works
(`postgresql+psycopg://...`). Construction brings the schema to the newest migration
(store/migrate.py).

Every SQLite connection loads sqlite-vec (the vector functions of the chunk store). Python's
own sqlite3 cannot load extensions where it was built without them (pyenv's default), so
there the driver is pysqlite3 (pysqlite3-binary: the same DB-API with an SQLite of its own).
Only one SQLite library ever opens the database file: two in one process would not see each
other's POSIX locks.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import ModuleType

import sqlite_vec
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from glassbox.store import migrate


def default_url(cache_dir: Path) -> str:
    return f"sqlite:///{Path(cache_dir) / 'glassbox.db'}"


def sqlite_module() -> ModuleType:
    """The DB-API module whose connections can load extensions."""
    probe = sqlite3.connect(":memory:")
    try:
        if hasattr(probe, "enable_load_extension"):
            return sqlite3
    finally:
        probe.close()
    import pysqlite3.dbapi2

    return pysqlite3.dbapi2


def _sqlite_engine(url: str) -> Engine:
    parsed = make_url(url)
    in_memory = parsed.database in (None, "", ":memory:")
    if not in_memory:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        # Sessions are used from FastAPI's worker threads.
        connect_args={"check_same_thread": False},
        poolclass=StaticPool if in_memory else None,
        module=sqlite_module(),
        hide_parameters=True,  # see Database
    )

    @event.listens_for(engine, "connect")
    def _pragmas(conn, _record) -> None:
        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        conn.enable_load_extension(False)
        cursor = conn.cursor()
        # Readers do not block the writer; a second process waits instead of failing.
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            # With WAL, NORMAL never corrupts the database; a power cut may lose the last
            # commits. It takes the fsync off every commit (a state fork is one).
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.close()

    return engine


class Database:
    """The SQLAlchemy engine and sessions of one database URL. Its errors never quote the
    statement's parameters (`hide_parameters`): they hold messages, documents and keys' hashes,
    and an error's text ends up in logs and in a job's stored error."""

    def __init__(self, url: str):
        self.url = url
        if make_url(url).get_backend_name() == "sqlite":
            self.engine = _sqlite_engine(url)
        else:
            self.engine = create_engine(url, pool_pre_ping=True, hide_parameters=True)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        migrate.upgrade(self.engine)

    def session(self) -> Session:
        return self._sessions()

    def ping(self) -> None:
        """A round trip to the database (raises when it cannot be reached)."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()
