"""owners: every row gets an owner (the tenant that made it); variants.session_id becomes
`namespace`, and a variant's key becomes (owner, namespace, variant_id).

Existing rows get the owner 'local' (the local anonymous principal's tenant). Downgrading
drops the owners, so it fails if two owners have a variant with the same namespace and id.

Revision ID: 0002_owners
Revises: 0001_baseline
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_owners"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None

# The name PostgreSQL gives a table's primary key when none is given, as `create_all` did.
# SQLite's key has no name: the naming convention lends it this one when the batch reads it.
PRIMARY_KEY = "variants_pkey"
_NAMING = {"pk": "%(table_name)s_pkey"}
_NAMESPACE = {"existing_type": sa.String(128), "existing_nullable": False}


def _owner_column() -> sa.Column:
    return sa.Column("owner", sa.String(128), server_default="local", nullable=False)


def _set_primary_key(columns: list[str]) -> None:
    """Replace the variants primary key, in a batch of its own: a batch that also renames
    columns would look up the new key's columns by their old names."""
    with op.batch_alter_table("variants", naming_convention=_NAMING) as batch:
        batch.drop_constraint(PRIMARY_KEY, type_="primary")
        batch.create_primary_key(PRIMARY_KEY, columns)


def upgrade() -> None:
    with op.batch_alter_table("states") as batch:
        batch.add_column(_owner_column())
        batch.create_index("ix_states_owner", ["owner"])
    with op.batch_alter_table("variants") as batch:
        batch.add_column(_owner_column())
        batch.create_index("ix_variants_owner", ["owner"])
        batch.alter_column("session_id", new_column_name="namespace", **_NAMESPACE)
    _set_primary_key(["owner", "namespace", "variant_id"])


def downgrade() -> None:
    _set_primary_key(["namespace", "variant_id"])
    with op.batch_alter_table("variants") as batch:
        batch.drop_index("ix_variants_owner")
        batch.drop_column("owner")
        batch.alter_column("namespace", new_column_name="session_id", **_NAMESPACE)
    with op.batch_alter_table("states") as batch:
        batch.drop_index("ix_states_owner")
        batch.drop_column("owner")
