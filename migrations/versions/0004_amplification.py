"""Amplification: sub-question trees, hierarchical digests, babble and prune, and the
exact model calls behind every day (distillation data).

Entries gain the columns those need (all nullable, so existing entries and their hashes
are unchanged), and ``calls`` records each model call: the messages sent, the reply,
and whether it was accepted.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("entries") as batch:
        batch.add_column(sa.Column("level", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("first_day", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("last_day", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("score", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("flagged", sa.Boolean(), nullable=True))
    op.create_table(
        "calls",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(26), nullable=False),
        sa.Column("day_id", sa.Integer(), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("task", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("entry_seq", sa.Integer(), nullable=True),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("reply", sa.Text(), nullable=False),
        sa.Column("accepted", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("model_version", sa.String(400), nullable=True),
        sa.Column("tokens_in", sa.Integer(), nullable=True),
        sa.Column("tokens_out", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_calls_run_id_runs")),
        sa.ForeignKeyConstraint(["day_id"], ["days.id"], name=op.f("fk_calls_day_id_days")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calls")),
        sa.UniqueConstraint("day_id", "ordinal", name="uq_calls_day_id_ordinal"),
    )
    op.create_index(
        "ix_entries_run_id_level_first_day", "entries", ["run_id", "level", "first_day"]
    )


def downgrade() -> None:
    op.drop_index("ix_entries_run_id_level_first_day", table_name="entries")
    op.drop_table("calls")
    with op.batch_alter_table("entries") as batch:
        batch.drop_column("flagged")
        batch.drop_column("score")
        batch.drop_column("last_day")
        batch.drop_column("first_day")
        batch.drop_column("level")
