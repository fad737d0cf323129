"""An index for the upload page's list: completed uploads, newest first, paged.

/api/uploads sorted every completed upload by completed_at (no index) for each page;
(state, completed_at, id) serves its filter, its order and its (completed_at, id)
cursor straight from the index.

Revision ID: 0005
Revises: 0003 (the lead rewires this after 0004 lands)
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_uploads_listing"


def upgrade() -> None:
    op.create_index(INDEX, "uploads", ["state", "completed_at", "id"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="uploads")
