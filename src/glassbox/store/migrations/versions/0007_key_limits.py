"""API keys carry their own rate limits (requests and tokens per minute; NULL: the default).

Revision ID: 0007_key_limits
Revises: 0006_api_keys
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_key_limits"
down_revision = "0006_api_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("requests_per_minute", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("tokens_per_minute", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("tokens_per_minute")
        batch.drop_column("requests_per_minute")
