"""Index digests by the last day they cover, so the view finds where its raw window may
start (the newest level-1 digest ends) without scanning every digest of the run.

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


def downgrade() -> None:
    op.drop_index("ix_entries_run_id_level_last_day", table_name="entries")
