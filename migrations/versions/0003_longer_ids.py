"""Upload ids up to 64 characters: the longest a pre-create hook may choose.

0001 sized ids for the 32 hex characters the server makes. SQLite never enforced that,
but PostgreSQL refused a longer hook-chosen id (a 500 on upload creation).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (("uploads", "id"), ("upload_parts", "final_id"), ("upload_parts", "partial_id"))


def _resize(length: int) -> None:
    # On SQLite, batch mode copies each table; env.py turns foreign keys off meanwhile,
    # or copying `uploads` would cascade-delete every row of `upload_parts`.
    for table in ("upload_parts", "uploads"):
        with op.batch_alter_table(table) as batch:
            for name in (column for owner, column in COLUMNS if owner == table):
                batch.alter_column(name, type_=sa.String(length=length), existing_nullable=False)


def upgrade() -> None:
    _resize(64)


def downgrade() -> None:
    _resize(32)
