"""Full-text search over entries: FTS5 on SQLite, a tsvector GIN index on PostgreSQL.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        # External-content FTS5 over the append-only entries table: one insert trigger is
        # all it needs, because entries are never updated or deleted.
        # run_id is indexed too, so a search can be limited to one run inside FTS5.
        op.execute(
            "CREATE VIRTUAL TABLE entries_fts USING fts5(title, body, run_id, "
            "content='entries', content_rowid='id', tokenize='porter unicode61')"
        )
        op.execute(
            "CREATE TRIGGER entries_fts_ai AFTER INSERT ON entries BEGIN "
            "INSERT INTO entries_fts(rowid, title, body, run_id) "
            "VALUES (new.id, new.title, new.body, new.run_id); END"
        )
        op.execute("INSERT INTO entries_fts(entries_fts) VALUES ('rebuild')")
    elif dialect == "postgresql":
        op.execute(
            "CREATE INDEX ix_entries_fts ON entries USING GIN "
            "(to_tsvector('english', title || ' ' || body))"
        )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS entries_fts_ai")
        op.execute("DROP TABLE IF EXISTS entries_fts")
    elif dialect == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_entries_fts")
