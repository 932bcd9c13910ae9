"""Days record which worker wrote them, and under which lease generation.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("days") as batch:
        batch.add_column(sa.Column("worker", sa.String(200), nullable=True))
        batch.add_column(sa.Column("lease_generation", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("days") as batch:
        batch.drop_column("lease_generation")
        batch.drop_column("worker")
