"""Upload links (grants) and quotas: ``grants``, ``quota_usage`` and, on ``uploads``,
the grant that made each upload and what it holds of a quota.

Uploads from before this revision belong to no grant. The live ones (active or
completed) are counted into the shared usage row (``*``, uploads without a grant) as
the quota would have counted them: their length (their offset while it is deferred),
one file each; a partial counts its bytes but no file, a final one file but no bytes
(its bytes are its partials'). So turning on ``UPLOADSVC_QUOTA_BYTES`` later counts what
is already there, and what they hold is freed once when they go.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import uploadsvc.models

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN_SCOPE = "*"  # models.OPEN_SCOPE, as of this revision


def upgrade() -> None:
    op.create_table(
        "grants",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("max_bytes", sa.BigInteger(), nullable=True),
        sa.Column("max_files", sa.Integer(), nullable=True),
        sa.Column("expires_at", uploadsvc.models.UTCDateTime(), nullable=True),
        sa.Column("revoked_at", uploadsvc.models.UTCDateTime(), nullable=True),
        sa.Column("types", sa.Text(), nullable=False),
        sa.Column("created_at", uploadsvc.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_table(
        "quota_usage",
        sa.Column("scope", sa.String(length=32), nullable=False),
        sa.Column("used_bytes", sa.BigInteger(), nullable=False),
        sa.Column("used_files", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("scope"),
    )
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("grant_id", sa.String(length=32), nullable=True))
        batch.add_column(
            sa.Column("quota_bytes", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("quota_files", sa.Integer(), nullable=False, server_default="0"))
    op.create_index("ix_uploads_grant_id", "uploads", ["grant_id"])
    live = "state IN ('ACTIVE', 'COMPLETED')"
    op.execute(
        "UPDATE uploads SET"
        " quota_bytes = CASE WHEN concat = 'FINAL' THEN 0"
        ' ELSE COALESCE(length, "offset") END,'
        " quota_files = CASE WHEN concat = 'PARTIAL' THEN 0 ELSE 1 END"
        f" WHERE {live}"
    )
    op.execute(
        "INSERT INTO quota_usage (scope, used_bytes, used_files)"
        f" SELECT '{OPEN_SCOPE}', COALESCE(SUM(quota_bytes), 0), COALESCE(SUM(quota_files), 0)"
        " FROM uploads"
    )


def downgrade() -> None:
    op.drop_index("ix_uploads_grant_id", table_name="uploads")
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("quota_files")
        batch.drop_column("quota_bytes")
        batch.drop_column("grant_id")
    op.drop_table("quota_usage")
    op.drop_table("grants")
