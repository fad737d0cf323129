"""The events outbox: webhook events written with the change they describe.

Each post-event (create, finish, terminate, expire) is a row of ``events`` recorded in
the same transaction as the upload's change, then delivered by a dispatcher
(uploadsvc/delivery.py) that claims rows with a lease. Nothing is backfilled: events of
uploads from before this revision were delivered (or lost) the old way.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("upload_id", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "PENDING", "DELIVERED", "FAILED", name="eventstate", native_enum=False, length=16
            ),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("due_at", sa.DateTime(), nullable=False),
        sa.Column("claimed_until", sa.DateTime(), nullable=True),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("delivered_at", sa.DateTime(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_events_due", "events", ["state", "due_at"])
    op.create_index("ix_events_id", "events", ["id"], unique=True)
    op.create_index("ix_events_upload", "events", ["upload_id", "seq"])


def downgrade() -> None:
    op.drop_table("events")
