"""Writes pre_alembic_main.sql: an SQLite database as glassbox made it before Alembic.

Run it against the checkout of main from before the Alembic migrations (the store made its
tables with `create_all` then), not against this tree:

    PYTHONPATH=/path/to/pre-alembic-checkout/src python tests/data/make_pre_alembic_main.py

It stores variants in two namespaces through that code's own `VariantService` (with edits)
and a parent and a child state record as services/states.py wrote them (tokens as int32
bytes, JSON config, checkpoints and meta), then dumps the file as SQL text.
tests/integration/test_migrations.py upgrades a copy of it and checks that nothing is lost.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import tempfile
from array import array
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

from glassbox.services.variants import VariantService
from glassbox.steering.variant import FeatureRef
from sqlalchemy import insert

from glassbox.store import Database, StateRow, VariantRow

OUT = Path(__file__).with_name("pre_alembic_main.sql")
PIRATE = FeatureRef(uuid="0f" * 16, label="pirate talk", index_in_sae=3)
CALM = FeatureRef(uuid="a1" * 16, label="calm", index_in_sae=7)


def write_variants(db: Database) -> None:
    variants = VariantService(db, base_model="tiny-llama")
    variants.set_edit("alice-notes", "default", PIRATE, 0.25)
    variants.create("alice-notes", "pirate", base_variant_id="default")
    variants.set_edit("alice-notes", "pirate", CALM, 0.5, mode="pin")
    variants.create("alice-notes", "empty")
    variants.set_edit("bob:42", "default", CALM, None, mode="ablate")
    variants.create("bob:42", "pirate")
    variants.set_edit("bob:42", "pirate", PIRATE, 2.0, mode="mul")


def write_states(db: Database) -> None:
    parent_tokens = [1, 9690, 28, 0, 49151]
    child_tokens = [*parent_tokens, 2147483647, 17]
    rows = [
        {
            "state_id": "st_parent",
            "fingerprint": "fp-tiny",
            "parent_id": None,
            "num_tokens": len(parent_tokens),
            "token_ids": array("i", parent_tokens).tobytes(),
            "config": json.dumps({"temperature": 0.7, "top_p": 0.9, "seed": 7}),
            "checkpoints": json.dumps({"greeting": 3}),
            "meta": json.dumps({}),
            "created_at": datetime(2026, 11, 20, 8, 30, 0, 123456, tzinfo=UTC),
            "modified_at": datetime(2026, 11, 20, 8, 31, 0, tzinfo=UTC),
        },
        {
            "state_id": "st_child",
            "fingerprint": "fp-tiny",
            "parent_id": "st_parent",
            "num_tokens": len(child_tokens),
            "token_ids": array("i", child_tokens).tobytes(),
            "config": json.dumps({"temperature": 0.0}),
            "checkpoints": json.dumps({"greeting": 3, "answer": 7}),
            "meta": json.dumps({"merged_from": ["st_parent", "st_other"]}),
            "created_at": datetime(2026, 11, 21, 9, 0, 0, tzinfo=UTC),
            "modified_at": datetime(2026, 11, 21, 9, 5, 30, 500000, tzinfo=UTC),
        },
    ]
    with db.engine.begin() as conn:
        conn.execute(insert(StateRow), rows)


def main() -> None:
    if not hasattr(VariantRow, "session_id"):
        sys.exit("run this against the pre-Alembic checkout (its VariantRow has session_id)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "glassbox.db"
        db = Database(f"sqlite:///{path}")
        write_variants(db)
        write_states(db)
        db.close()
        with closing(sqlite3.connect(path)) as conn:
            OUT.write_text("\n".join(conn.iterdump()) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
