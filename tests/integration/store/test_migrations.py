"""Alembic migrations: a fresh database reaches head, the models and the revisions agree,
and a database written before Alembic (tests/data/pre_alembic_main.sql, made by the code of
that time) is upgraded in place without losing a variant or a state, on SQLite and on
PostgreSQL; `glassbox db upgrade` and `glassbox db current`."""

from __future__ import annotations

import json
import sqlite3
from array import array
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from helpers.pg_server import fresh_database
from sqlalchemy import Connection, MetaData, Table, create_engine, event, insert, inspect, select
from sqlalchemy import text as sql
from sqlalchemy.engine import Engine

from glassbox.cli import main as cli_main
from glassbox.features.variants import VariantService
from glassbox.principal import LOCAL, LOCAL_TENANT
from glassbox.states.records import StateRecords
from glassbox.store import Base, Database, StateRow, VariantRow, migrate

# The parent state's tokens in tests/data/pre_alembic_main.sql (int32, little-endian).
PARENT_TOKENS_HEX = "01000000DA2500001C00000000000000FFBF0000"

PRE_ALEMBIC_SQL = Path(__file__).parents[2] / "data" / "pre_alembic_main.sql"

# What tests/data/make_pre_alembic_main.py stored.
PRE_ALEMBIC_VARIANTS = {
    ("alice-notes", "default"),
    ("alice-notes", "pirate"),
    ("alice-notes", "empty"),
    ("bob:42", "default"),
    ("bob:42", "pirate"),
}
PARENT_TOKENS = [1, 9690, 28, 0, 49151]
CHILD_TOKENS = [*PARENT_TOKENS, 2147483647, 17]
PIRATE_UUID, CALM_UUID = "0f" * 16, "a1" * 16

Rows = tuple[dict[tuple[str, str], dict[str, Any]], dict[str, dict[str, Any]]]


# --- helpers ------------------------------------------------------------------------------


def _sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def _load_pre_alembic(path: Path) -> str:
    """An SQLite file holding the pre-Alembic database; its URL."""
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(PRE_ALEMBIC_SQL.read_text())
    return _sqlite_url(path)


def _utc(value: Any) -> Any:
    """Datetimes as aware UTC (SQLite keeps no zone), anything else as it is."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value


def _rows(conn: Connection, namespace_column: str) -> Rows:
    """Every variant by (namespace, variant_id) and every state by id, each with all its
    columns but the owner, in values comparable across schemas and databases."""
    meta = MetaData()
    variants = Table("variants", meta, autoload_with=conn)
    states = Table("states", meta, autoload_with=conn)
    by_key: dict[tuple[str, str], dict[str, Any]] = {}
    for row in conn.execute(select(variants)).mappings():
        values = {k: _utc(v) for k, v in row.items() if k not in ("owner", namespace_column)}
        by_key[(row[namespace_column], row["variant_id"])] = values
    by_id = {
        row["state_id"]: {k: _utc(v) for k, v in row.items() if k != "owner"}
        for row in conn.execute(select(states)).mappings()
    }
    return by_key, by_id


def _owners(conn: Connection) -> dict[str, list[str]]:
    return {
        table: conn.execute(sql(f"SELECT DISTINCT owner FROM {table}")).scalars().all()
        for table in ("variants", "states")
    }


def _tokens(blob: bytes) -> list[int]:
    tokens = array("i")
    tokens.frombytes(blob)
    return tokens.tolist()


def _check_pre_alembic_content(rows: Rows) -> None:
    """The rows hold what make_pre_alembic_main.py stored."""
    variants, states = rows
    assert set(variants) == PRE_ALEMBIC_VARIANTS
    assert variants[("alice-notes", "pirate")]["parent_variant_id"] == "default"
    assert variants[("bob:42", "pirate")]["parent_variant_id"] is None
    edits = json.loads(variants[("alice-notes", "pirate")]["spec"])["edits"]
    assert [(e["feature"]["uuid"], e["mode"], e["value"]) for e in edits] == [
        (PIRATE_UUID, "nudge", 0.25),
        (CALM_UUID, "pin", 0.5),
    ]
    assert set(states) == {"st_parent", "st_child"}
    parent, child = states["st_parent"], states["st_child"]
    assert (_tokens(parent["token_ids"]), parent["num_tokens"]) == (PARENT_TOKENS, 5)
    assert (_tokens(child["token_ids"]), child["num_tokens"]) == (CHILD_TOKENS, 7)
    assert (parent["parent_id"], child["parent_id"]) == (None, "st_parent")
    assert json.loads(parent["config"]) == {"temperature": 0.7, "top_p": 0.9, "seed": 7}
    assert json.loads(child["checkpoints"]) == {"greeting": 3, "answer": 7}
    assert json.loads(child["meta"]) == {"merged_from": ["st_parent", "st_other"]}
    assert child["modified_at"] == datetime(2026, 11, 21, 9, 5, 30, 500000, tzinfo=UTC)


def _schema_differences(engine: Engine) -> list[Any]:
    """What autogenerate would change to make the database match the models, and any
    primary key that differs (autogenerate does not compare primary keys)."""
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        diff: list[Any] = list(compare_metadata(context, Base.metadata))
        db = inspect(conn)
        for table in Base.metadata.sorted_tables:
            in_db = db.get_pk_constraint(table.name)["constrained_columns"]
            in_model = [c.name for c in table.primary_key.columns]
            if in_db != in_model:
                diff.append(("primary key", table.name, in_db, in_model))
    return diff


@pytest.fixture
def pg_engine(postgres_url: str) -> Iterator[Engine]:
    """An engine on a new, empty database of the session's PostgreSQL server."""
    with fresh_database(postgres_url) as url:
        engine = create_engine(url)
        try:
            yield engine
        finally:
            engine.dispose()


# --- SQLite -------------------------------------------------------------------------------


def test_fresh_sqlite_reaches_head_and_a_second_upgrade_changes_nothing(tmp_path: Path):
    url = _sqlite_url(tmp_path / "glassbox.db")
    db = Database(url)
    try:
        assert migrate.current(db.engine) == migrate.head() == "0007_key_limits"
        schema = inspect(db.engine)
        assert set(schema.get_table_names()) == {
            "alembic_version",
            "variants",
            "states",
            "chat_sessions",
            "chat_messages",
            "embedding_jobs",
            "embedding_job_documents",
            "embedding_job_batches",
            "embedding_quota_use",
            "files",
            "vector_stores",
            "vector_store_files",
            "chunks",
            "api_keys",
        }
        for table in Base.metadata.sorted_tables:
            columns = {c["name"]: c["nullable"] for c in schema.get_columns(table.name)}
            assert columns == {c.name: c.nullable for c in table.columns}
        assert schema.get_pk_constraint("variants")["constrained_columns"] == [
            "owner", "namespace", "variant_id",
        ]  # fmt: skip

        statements: list[str] = []
        event.listen(db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        migrate.upgrade(db.engine)
        writes = [s for s in statements if s.split()[0].upper() not in ("SELECT", "PRAGMA")]
        assert writes == []
        assert migrate.current(db.engine) == migrate.head()
    finally:
        db.close()


def test_rows_written_without_an_owner_belong_to_local(tmp_path: Path):
    """states/records.py inserts records with Core and features/variants.py adds rows with
    the ORM, neither naming an owner: the server default fills it in."""
    db = Database(_sqlite_url(tmp_path / "glassbox.db"))
    try:
        with db.engine.begin() as conn:
            conn.execute(
                insert(StateRow),
                {"state_id": "st_1", "fingerprint": "fp", "parent_id": None, "num_tokens": 2,
                 "token_ids": array("i", [5, 6]).tobytes(), "config": "{}",
                 "checkpoints": "{}", "meta": "{}"},
            )  # fmt: skip
        variants = VariantService(db, base_model="tiny-llama")
        created = variants.create(LOCAL, "ns", "v1")
        assert (created.namespace, created.variant_id) == ("ns", "v1")
        with db.session() as s:
            assert s.get(StateRow, "st_1").owner == LOCAL_TENANT
            assert s.get(VariantRow, (LOCAL_TENANT, "ns", "v1")).owner == "local"
            assert s.get(VariantRow, (LOCAL_TENANT, "ns", "default")) is None
        assert [v.variant_id for v in variants.list(LOCAL, "ns")] == ["default", "v1"]
    finally:
        db.close()


def test_models_match_migrations_on_sqlite(tmp_path: Path):
    db = Database(_sqlite_url(tmp_path / "glassbox.db"))
    try:
        assert _schema_differences(db.engine) == []
    finally:
        db.close()


def test_baseline_is_the_pre_alembic_schema(tmp_path: Path):
    """The baseline revision makes the tables exactly as `create_all` made them before."""
    old = create_engine(_load_pre_alembic(tmp_path / "old.db"))
    baseline = create_engine(_sqlite_url(tmp_path / "baseline.db"))
    with baseline.begin() as conn:
        command.upgrade(migrate.alembic_config(conn), migrate.BASELINE)

    def shape(engine: Engine) -> dict[str, Any]:
        schema = inspect(engine)
        return {
            table: (
                [(c["name"], str(c["type"]), c["nullable"]) for c in schema.get_columns(table)],
                schema.get_pk_constraint(table)["constrained_columns"],
                sorted((i["name"], tuple(i["column_names"])) for i in schema.get_indexes(table)),
            )
            for table in ("variants", "states")
        }

    try:
        old_shape = shape(old)
        assert old_shape["variants"][1] == ["session_id", "variant_id"]
        assert shape(baseline) == old_shape
    finally:
        old.dispose()
        baseline.dispose()


def test_pre_alembic_sqlite_database_is_upgraded_in_place(tmp_path: Path):
    url = _load_pre_alembic(tmp_path / "glassbox.db")
    old = create_engine(url)
    with old.connect() as conn:
        before = _rows(conn, "session_id")
    old.dispose()
    _check_pre_alembic_content(before)
    assert migrate.current(url) is None

    db = Database(url)
    try:
        assert migrate.current(db.engine) == migrate.head()
        with db.engine.connect() as conn:
            assert _rows(conn, "namespace") == before
            assert _owners(conn) == {"variants": ["local"], "states": ["local"]}

        variants = VariantService(db, base_model="tiny-llama")
        listed = variants.list(LOCAL, "alice-notes")
        assert [v.variant_id for v in listed] == ["default", "pirate", "empty"]
        pirate = variants.get(LOCAL, "alice-notes", "pirate")
        assert pirate.namespace == "alice-notes"
        assert [(e.feature.uuid, e.mode, e.value) for e in pirate.spec.edits] == [
            (PIRATE_UUID, "nudge", 0.25),
            (CALM_UUID, "pin", 0.5),
        ]
        old_pirate = before[0][("alice-notes", "pirate")]
        assert (pirate.created_at, pirate.updated_at) == (
            old_pirate["created_at"], old_pirate["updated_at"],
        )  # fmt: skip
        ablated = variants.get(LOCAL, "bob:42").spec.edits
        assert [(e.feature.uuid, e.mode) for e in ablated] == [(CALM_UUID, "ablate")]

        # The state service's own reader finds both states, as they were, owned by local.
        parent, child = StateRecords(db, "fp-tiny").load()
        assert (parent.state_id, child.state_id) == ("st_parent", "st_child")
        assert (parent.parent_id, child.parent_id) == (None, "st_parent")
        assert parent.token_ids == list(array("i", bytes.fromhex(PARENT_TOKENS_HEX)))
        assert child.token_ids[: parent.num_tokens] == parent.token_ids
        assert child.num_tokens == 7 and parent.num_tokens == 5
        assert parent.config == {"temperature": 0.7, "top_p": 0.9, "seed": 7}
        assert child.checkpoints == {"greeting": 3, "answer": 7}
        assert child.meta == {"merged_from": ["st_parent", "st_other"]}
        assert parent.created_at == datetime(2026, 11, 20, 8, 30, 0, 123456, tzinfo=UTC)
        assert (parent.owner, child.owner) == (LOCAL_TENANT, LOCAL_TENANT)
    finally:
        db.close()


def test_cli_db_upgrade_and_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    url = _sqlite_url(tmp_path / "cli.db")
    monkeypatch.setenv("GLASSBOX_DATABASE_URL", url)

    assert cli_main(["db", "current"]) == 0
    assert capsys.readouterr().out.split() == ["none", url]
    assert cli_main(["db", "upgrade"]) == 0
    assert capsys.readouterr().out.split() == [migrate.head(), "(head)", url]
    assert cli_main(["db", "current"]) == 0
    assert capsys.readouterr().out.split() == [migrate.head(), "(head)", url]
    assert migrate.current(url) == "0007_key_limits"


# --- PostgreSQL ---------------------------------------------------------------------------


@pytest.mark.postgres
def test_models_match_migrations_on_postgres(pg_engine: Engine):
    migrate.upgrade(pg_engine)
    assert migrate.current(pg_engine) == migrate.head()
    assert _schema_differences(pg_engine) == []


@pytest.mark.postgres
def test_pre_alembic_postgres_database_is_upgraded_in_place(tmp_path: Path, pg_engine: Engine):
    """Today's schema made by the baseline revision (and no `alembic_version`, as
    `create_all` left it), the rows of the SQLite fixture copied in; then upgrade to head,
    downgrade to the baseline and upgrade again, losing nothing."""
    source = create_engine(_load_pre_alembic(tmp_path / "old.db"))
    with pg_engine.begin() as conn:
        command.upgrade(migrate.alembic_config(conn), migrate.BASELINE)
        conn.execute(sql("DROP TABLE alembic_version"))
    with source.connect() as src, pg_engine.begin() as dst:
        meta = MetaData()
        for name in ("variants", "states"):
            rows = [{k: _utc(v) for k, v in r.items()} for r in src.execute(
                select(Table(name, MetaData(), autoload_with=src))).mappings()]  # fmt: skip
            dst.execute(insert(Table(name, meta, autoload_with=dst)), rows)
        before = _rows(src, "session_id")
    source.dispose()
    _check_pre_alembic_content(before)
    assert migrate.current(pg_engine) is None

    migrate.upgrade(pg_engine)
    assert migrate.current(pg_engine) == migrate.head()
    with pg_engine.connect() as conn:
        assert _rows(conn, "namespace") == before
        assert _owners(conn) == {"variants": ["local"], "states": ["local"]}
    assert _schema_differences(pg_engine) == []

    with pg_engine.begin() as conn:
        command.downgrade(migrate.alembic_config(conn), migrate.BASELINE)
    assert migrate.current(pg_engine) == migrate.BASELINE
    with pg_engine.connect() as conn:
        assert "owner" not in {c["name"] for c in inspect(conn).get_columns("states")}
        assert _rows(conn, "session_id") == before

    migrate.upgrade(pg_engine)
    assert migrate.current(pg_engine) == migrate.head()
    with pg_engine.connect() as conn:
        assert _rows(conn, "namespace") == before
    db = Database(pg_engine.url.render_as_string(hide_password=False))
    try:
        pirate = VariantService(db, base_model="tiny-llama").get(LOCAL, "alice-notes", "pirate")
        assert [e.feature.uuid for e in pirate.spec.edits] == [PIRATE_UUID, CALM_UUID]
    finally:
        db.close()


def test_a_pre_alembic_database_without_the_states_table_gets_it(tmp_path: Path):
    """A database of the first weeks had `variants` only: the baseline creates what it lacks."""
    url = _load_pre_alembic(tmp_path / "glassbox.db")
    with closing(sqlite3.connect(tmp_path / "glassbox.db")) as conn:
        conn.execute("DROP TABLE states")
        conn.commit()
    db = Database(url)
    try:
        assert migrate.current(db.engine) == migrate.head()
        assert _schema_differences(db.engine) == []
        listed = VariantService(db, base_model="tiny-llama").list(LOCAL, "alice-notes")
        assert [v.variant_id for v in listed] == ["default", "pirate", "empty"]
        assert StateRecords(db, "fp-tiny").load() == []
    finally:
        db.close()
