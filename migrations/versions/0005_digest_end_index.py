"""Indexes that keep a day's queries from growing with the record: digests by the last
day they cover (where the view's raw window may start, and how far each level reaches),
and days by status (counting committed days for budgets and check-in schedules).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_entries_run_id_level_last_day", "entries", ["run_id", "level", "last_day"])
    op.create_index("ix_days_run_id_status_index", "days", ["run_id", "status", "index"])


def downgrade() -> None:
    op.drop_index("ix_days_run_id_status_index", table_name="days")
    op.drop_index("ix_entries_run_id_level_last_day", table_name="entries")
