"""chat sessions: sessions (owner, user, settings, the KV state of the conversation) and
their messages.

Revision ID: 0003_chat_sessions
Revises: 0002_owners
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_chat_sessions"
down_revision = "0002_owners"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chat_sessions",
        sa.Column("session_id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(128), server_default="local", nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("settings", sa.Text(), nullable=False),
        sa.Column("state_id", sa.String(64), nullable=True),
        sa.Column("context_start", sa.Integer(), server_default="0", nullable=False),
        sa.Column("fence", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_chat_sessions_owner", "chat_sessions", ["owner"])
    op.create_index("ix_chat_sessions_user_id", "chat_sessions", ["user_id"])
    op.create_table(
        "chat_messages",
        sa.Column("message_id", sa.String(64), primary_key=True),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("sender", sa.String(16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_chat_messages_session_id", "chat_messages", ["session_id"])


def downgrade() -> None:
    op.drop_index("ix_chat_messages_session_id", "chat_messages")
    op.drop_table("chat_messages")
    op.drop_index("ix_chat_sessions_user_id", "chat_sessions")
    op.drop_index("ix_chat_sessions_owner", "chat_sessions")
    op.drop_table("chat_sessions")
