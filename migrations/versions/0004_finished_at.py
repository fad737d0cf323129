"""The finish sequence as a state: ``uploads.finished_at``.

A completed upload whose ``finished_at`` is NULL is finishing: its finish sequence
(store finish, pre-finish and post-finish hooks, finals waiting on it) is due, and the
next request or cleanup run to hold its lock runs it. Uploads completed before this
revision are taken as finished (their completion time): nothing can tell which of them
missed their finish, and replaying post-finish for every old upload at deploy time would
be worse than the bug this fixes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("finished_at", sa.DateTime(), nullable=True))
    op.execute(
        "UPDATE uploads SET finished_at = COALESCE(completed_at, updated_at)"
        " WHERE state = 'COMPLETED'"
    )


def downgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("finished_at")
