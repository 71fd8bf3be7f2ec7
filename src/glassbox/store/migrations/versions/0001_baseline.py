"""baseline: the tables as glassbox made them with `create_all` before Alembic.

A database from that time has these tables and no `alembic_version`: this revision creates
only the tables it lacks (a database of the first weeks has `variants` but no `states`), and
the later revisions upgrade it from here.

Revision ID: 0001_baseline
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "variants" not in existing:
        _create_variants()
    if "states" not in existing:
        _create_states()


def _create_variants() -> None:
    op.create_table(
        "variants",
        sa.Column("session_id", sa.String(128), primary_key=True),
        sa.Column("variant_id", sa.String(128), primary_key=True),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("parent_variant_id", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def _create_states() -> None:
    op.create_table(
        "states",
        sa.Column("state_id", sa.String(64), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("parent_id", sa.String(64), nullable=True),
        sa.Column("num_tokens", sa.Integer(), nullable=False),
        sa.Column("token_ids", sa.LargeBinary(), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("checkpoints", sa.Text(), nullable=False),
        sa.Column("meta", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("modified_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_states_fingerprint", "states", ["fingerprint"])
    op.create_index("ix_states_parent_id", "states", ["parent_id"])


def downgrade() -> None:
    op.drop_table("states")
    op.drop_table("variants")
