"""Whole-file digests and verdicts: ``uploads.digest``, ``verdict``, ``verdict_reason``.

A client may declare the digest of the whole file at creation; the finish checks it
(and the type gate and the check hook) and records a verdict with ``finished_at``: only
an upload whose verdict is OK is served. Uploads finished before this revision were
served as they were, so they are taken as OK; unfinished ones get their verdict when
they finish.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("digest", sa.String(128), nullable=True))
        batch.add_column(
            sa.Column(
                "verdict",
                sa.Enum("OK", "CORRUPT", "REJECTED", name="verdict", native_enum=False, length=16),
                nullable=True,
            )
        )
        batch.add_column(sa.Column("verdict_reason", sa.Text(), nullable=True))
    op.execute("UPDATE uploads SET verdict = 'OK' WHERE finished_at IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("verdict_reason")
        batch.drop_column("verdict")
        batch.drop_column("digest")
