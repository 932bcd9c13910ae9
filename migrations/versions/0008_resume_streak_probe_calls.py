"""Resuming a run starts its failed-day streak afresh, and a run's probe-prediction calls
can be found without reading all of ``calls``.

- ``runs.resumed_after_day`` keeps the last day index as it stood when the run last
  became running again; the streak that fails a run counts only the days after it.
- ``ix_calls_run_id_role``: a check-in's probe predictions are rows of ``calls``
  (role ``probe``) attached to the last day it covers, and `run show` sums their tokens
  and time through this index. It also serves `run delete`, which found a run's calls
  by scanning the table.

No table is copied: a nullable column is an ``ALTER TABLE ... ADD COLUMN`` on both
backends, and the index is built in one read of ``calls``. (Making ``calls.day_id``
nullable instead, for calls outside any day, would copy the whole table on SQLite.)

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
    op.create_index("ix_calls_run_id_role", "calls", ["run_id", "role"])


def downgrade() -> None:
    op.drop_index("ix_calls_run_id_role", table_name="calls")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("resumed_after_day")
