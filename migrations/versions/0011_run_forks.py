"""Forks: a run may name the run it was forked from, and the entries it copied say which
run first wrote them.

- ``runs.parent_run_id``, ``fork_day``, ``fork_seq`` and ``fork_head``: the parent, the
  last day index taken from it, how many of its entries were taken, and the parent's chain
  hash at that point, which ``record verify`` of the fork recomputes. No foreign key to
  ``runs``: a fork keeps its own copy of the prefix and outlives a deleted parent, and
  still names it.
- ``entries.origin_run_id`` and ``origin_parent_id``: set only on a copied entry, to the
  run id and parent entry id its hash was computed with where it was first written, so a
  copy keeps its original hash and the fork's chain up to the fork point is the parent's,
  hash for hash. Every other entry leaves them empty and hashes as before.

Nullable columns only: an ``ALTER TABLE ... ADD COLUMN`` on both backends, no table copied
for the columns. The index lets ``run delete`` and ``run show`` find a run's forks.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("parent_run_id", sa.String(26), nullable=True))
        batch.add_column(sa.Column("fork_day", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("fork_seq", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("fork_head", sa.String(64), nullable=True))
    op.create_index("ix_runs_parent_run_id", "runs", ["parent_run_id"])
    with op.batch_alter_table("entries") as batch:
        batch.add_column(sa.Column("origin_run_id", sa.String(26), nullable=True))
        batch.add_column(sa.Column("origin_parent_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("entries") as batch:
        batch.drop_column("origin_parent_id")
        batch.drop_column("origin_run_id")
    op.drop_index("ix_runs_parent_run_id", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("fork_head")
        batch.drop_column("fork_seq")
        batch.drop_column("fork_day")
        batch.drop_column("parent_run_id")
