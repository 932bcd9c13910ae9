"""Calibrated drift: each probe pair keeps its calibrated agreement, the chance and
ceiling levels it was read against, and the judge's verdict; each check-in keeps its mean
agreement, the human's ceiling, the drift trend and which similarity measured them, so
that `checkin list --json` and the exports show the figures a decision was made on.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("probe_pairs") as batch:
        batch.add_column(sa.Column("agreement", sa.Float(), nullable=True))
        batch.add_column(sa.Column("null_level", sa.Float(), nullable=True))
        batch.add_column(sa.Column("ceiling", sa.Float(), nullable=True))
        batch.add_column(sa.Column("judge_rating", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("judge_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("judge_calls", sa.JSON(), nullable=True))
    with op.batch_alter_table("checkins") as batch:
        batch.add_column(sa.Column("agreement", sa.Float(), nullable=True))
        batch.add_column(sa.Column("ceiling", sa.Float(), nullable=True))
        batch.add_column(sa.Column("trend", sa.Float(), nullable=True))
        batch.add_column(sa.Column("similarity", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("checkins") as batch:
        for name in ("similarity", "trend", "ceiling", "agreement"):
            batch.drop_column(name)
    with op.batch_alter_table("probe_pairs") as batch:
        for name in (
            "judge_calls",
            "judge_reason",
            "judge_rating",
            "ceiling",
            "null_level",
            "agreement",
        ):
            batch.drop_column(name)
