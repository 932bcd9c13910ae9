"""Resuming a run starts its failed-day streak afresh: ``runs.resumed_after_day`` keeps
the last day index as it stood when the run was last resumed, and the streak that fails
a run counts only the days after it.

One nullable column: an ``ALTER TABLE ... ADD COLUMN`` on both backends, no table copy.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("resumed_after_day", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("resumed_after_day")
