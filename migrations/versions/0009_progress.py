"""What the operator view (/admin) watches: bodies in flight, bytes per minute, failures.

upload_progress: one row per body streaming now, written about once a second by its
worker (uploadsvc/progress.py), so every worker and host shows the same progress.
received_per_minute: the chart's bytes received per minute, summed over every worker.
upload_failures: recent failures by reason (checksum, quota, type...).

And an index on uploads.updated_at: the view's event feed asks every second which
uploads changed since the last second (created, written, finished, terminated, expired).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from uploadsvc.models import ID_LENGTH, UTCDateTime

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_uploads_updated_at", "uploads", ["updated_at"])
    op.create_table(
        "upload_progress",
        sa.Column("upload_id", sa.String(ID_LENGTH), primary_key=True),
        sa.Column("stream", sa.String(40), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("rate", sa.BigInteger(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("last_byte_at", UTCDateTime(), nullable=False),
        sa.Column("reported_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_upload_progress_reported_at", "upload_progress", ["reported_at"])
    op.create_table(
        "received_per_minute",
        sa.Column("minute", UTCDateTime(), primary_key=True),
        sa.Column("received", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "upload_failures",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("upload_id", sa.String(ID_LENGTH), nullable=True),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("detail", sa.String(200), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_upload_failures_at", "upload_failures", ["at"])


def downgrade() -> None:
    op.drop_index("ix_upload_failures_at", table_name="upload_failures")
    op.drop_table("upload_failures")
    op.drop_table("received_per_minute")
    op.drop_index("ix_upload_progress_reported_at", table_name="upload_progress")
    op.drop_table("upload_progress")
    op.drop_index("ix_uploads_updated_at", table_name="uploads")
