"""Create the uploads registry.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import uploadsvc.models

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "uploads",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "ACTIVE",
                "COMPLETED",
                "TERMINATED",
                "EXPIRED",
                name="uploadstate",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("length", sa.BigInteger(), nullable=True),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("upload_metadata", sa.Text(), nullable=False),
        sa.Column("verifying", sa.Boolean(), nullable=False),
        sa.Column("created_at", uploadsvc.models.UTCDateTime(), nullable=False),
        sa.Column("updated_at", uploadsvc.models.UTCDateTime(), nullable=False),
        sa.Column("expires_at", uploadsvc.models.UTCDateTime(), nullable=True),
        sa.Column("completed_at", uploadsvc.models.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("uploads") as batch:
        batch.create_index("ix_uploads_state", ["state"])
        batch.create_index("ix_uploads_expires_at", ["expires_at"])


def downgrade() -> None:
    op.drop_table("uploads")
