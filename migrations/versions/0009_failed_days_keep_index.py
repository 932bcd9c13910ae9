"""A failed day no longer takes a day index: the next try of that day reuses it.

- ``uq_days_run_id_index`` (unique over every day) becomes ``uq_days_run_id_index_held``,
  unique over the days that are not ``failed``. Committed and reverted days still hold
  one index each, densely; any number of failed tries can sit at the index they tried.
- ``runs.resumed_after_day`` (an index) becomes ``runs.resumed_after_day_id`` (a day
  row id). The failed-day streak counts failed tries made after the run last became
  running again; tries of one index are told apart by their row, not by their index.
  Existing values carry over: the last day row at or before the stored index.
- Failed days after a run's last committed or reverted day are renumbered to the index
  the run's next day takes, so they read as tries of that day. Failed days between
  others keep their index: the gap stays, and counting committed days allows for it.

On SQLite both tables are copied (a constraint and a column cannot be dropped in
place); ``loopsim db upgrade`` backs the file up first, as for every migration.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_HELD = sa.text("status != 'failed'")


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("resumed_after_day_id", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE runs SET resumed_after_day_id = (SELECT COALESCE(MAX(days.id), 0) FROM days"
        ' WHERE days.run_id = runs.id AND days."index" <= runs.resumed_after_day)'
        " WHERE resumed_after_day IS NOT NULL"
    )
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("resumed_after_day")
    with op.batch_alter_table("days") as batch:
        batch.drop_constraint("uq_days_run_id_index", type_="unique")
    op.create_index(
        "uq_days_run_id_index_held",
        "days",
        ["run_id", "index"],
        unique=True,
        sqlite_where=_HELD,
        postgresql_where=_HELD,
    )
    # Failed days after a run's last held index become tries of its next day, as they
    # would be now. Failed days between held ones keep their index (a gap, which
    # counting committed days allows for); a failed day holds no entry or chain link.
    op.execute(
        'UPDATE days SET "index" = 1 + (SELECT COALESCE(MAX(held."index"), 0)'
        " FROM days AS held WHERE held.run_id = days.run_id AND held.status != 'failed')"
        ' WHERE status = \'failed\' AND "index" > (SELECT COALESCE(MAX(held."index"), 0)'
        " FROM days AS held WHERE held.run_id = days.run_id AND held.status != 'failed')"
    )


def downgrade() -> None:
    # Refuses (the unique constraint fails) if a failed try shares an index with
    # another day: such a record cannot be told in the old schema's terms.
    op.drop_index("uq_days_run_id_index_held", table_name="days")
    with op.batch_alter_table("days") as batch:
        batch.create_unique_constraint("uq_days_run_id_index", ["run_id", "index"])
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("resumed_after_day", sa.Integer(), nullable=True))
    op.execute(
        'UPDATE runs SET resumed_after_day = (SELECT COALESCE(MAX(days."index"), 0)'
        " FROM days WHERE days.id <= runs.resumed_after_day_id AND days.run_id = runs.id)"
        " WHERE resumed_after_day_id IS NOT NULL"
    )
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("resumed_after_day_id")
