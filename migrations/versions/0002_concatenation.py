"""Concatenation: each upload's role, and the partials of each final upload.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(
            sa.Column(
                "concat",
                sa.Enum("PARTIAL", "FINAL", name="concat", native_enum=False, length=8),
                nullable=True,
            )
        )
    op.create_table(
        "upload_parts",
        sa.Column("final_id", sa.String(length=32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("partial_id", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(["final_id"], ["uploads.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("final_id", "position"),
    )
    with op.batch_alter_table("upload_parts") as batch:
        batch.create_index("ix_upload_parts_partial_id", ["partial_id"])


def downgrade() -> None:
    op.drop_table("upload_parts")
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("concat")
