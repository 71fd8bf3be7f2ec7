"""embedding jobs: jobs, their documents and stage progress, daily quota use.

Revision ID: 0004_embedding_jobs
Revises: 0003_chat_sessions
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_embedding_jobs"
down_revision = "0003_chat_sessions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "embedding_jobs",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("collection_id", sa.String(256), nullable=False),
        sa.Column("media_id", sa.String(256), nullable=True),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("max_tokens", sa.Integer(), nullable=False),
        sa.Column("overlap_tokens", sa.Integer(), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("documents", sa.Integer(), nullable=False),
        sa.Column("chunks", sa.Integer(), nullable=False),
        sa.Column("chunked", sa.Integer(), nullable=False),
        sa.Column("embedded", sa.Integer(), nullable=False),
        sa.Column("stored", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(128), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_embedding_jobs_owner", "embedding_jobs", ["owner"])
    op.create_index("ix_embedding_jobs_status_priority", "embedding_jobs", ["status", "priority"])
    op.create_table(
        "embedding_job_documents",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("document_id", sa.String(256), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("attributes", sa.Text(), nullable=False),
    )
    op.create_table(
        "embedding_job_batches",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("stage", sa.String(16), primary_key=True),
        sa.Column("batch", sa.Integer(), primary_key=True),
        sa.Column("chunks", sa.Integer(), nullable=False),
    )
    op.create_table(
        "embedding_quota_use",
        sa.Column("owner", sa.String(128), primary_key=True),
        sa.Column("user_id", sa.String(128), primary_key=True),
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("chunks", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("embedding_quota_use")
    op.drop_table("embedding_job_batches")
    op.drop_table("embedding_job_documents")
    op.drop_index("ix_embedding_jobs_status_priority", "embedding_jobs")
    op.drop_index("ix_embedding_jobs_owner", "embedding_jobs")
    op.drop_table("embedding_jobs")
