"""files, vector stores, their files and the stored chunks with their vectors.

On PostgreSQL the chunks' vectors are pgvector's `vector` (the extension is created here if
the database lacks it: that needs a role allowed to create it, or a DBA who did); elsewhere
float32 BLOBs that sqlite-vec reads.

Revision ID: 0005_vector_stores
Revises: 0004_embedding_jobs
"""

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005_vector_stores"
down_revision = "0004_embedding_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table(
        "files",
        sa.Column("file_id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(128), server_default="local", nullable=False),
        sa.Column("filename", sa.String(512), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_files_owner", "files", ["owner"])
    op.create_table(
        "vector_stores",
        sa.Column("vector_store_id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(128), server_default="local", nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("meta", sa.Text(), nullable=False),
        sa.Column("chunking", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_active_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_vector_stores_owner", "vector_stores", ["owner"])
    op.create_table(
        "vector_store_files",
        sa.Column("vector_store_id", sa.String(64), primary_key=True),
        sa.Column("file_id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(128), server_default="local", nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_code", sa.String(32), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("attributes", sa.Text(), nullable=False),
        sa.Column("chunking", sa.Text(), nullable=False),
        sa.Column("usage_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_vector_store_files_file_id", "vector_store_files", ["file_id"])
    op.create_index("ix_vector_store_files_owner", "vector_store_files", ["owner"])
    op.create_table(
        "chunks",
        sa.Column("owner", sa.String(128), primary_key=True),
        sa.Column("collection_id", sa.String(128), primary_key=True),
        sa.Column("document_id", sa.String(128), primary_key=True),
        sa.Column("position", sa.Integer(), primary_key=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("start_char", sa.Integer(), nullable=False),
        sa.Column("end_char", sa.Integer(), nullable=False),
        sa.Column("dimensions", sa.Integer(), nullable=False),
        sa.Column(
            "embedding", sa.LargeBinary().with_variant(Vector(), "postgresql"), nullable=False
        ),
        sa.Column("attributes", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False),
        sa.Column("writes", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("chunks")
    op.drop_index("ix_vector_store_files_owner", "vector_store_files")
    op.drop_index("ix_vector_store_files_file_id", "vector_store_files")
    op.drop_table("vector_store_files")
    op.drop_index("ix_vector_stores_owner", "vector_stores")
    op.drop_table("vector_stores")
    op.drop_index("ix_files_owner", "files")
    op.drop_table("files")
