"""PostgreSQL keeps each entry's search vector instead of parsing its text per query.

Until now a PostgreSQL search matched ``to_tsvector('english', title || ' ' || body)``,
computed again for every row the plan looked at and for every hit it ranked. With
planner statistics the GIN index kept that to the hits; without them (autovacuum off,
no ``ANALYZE`` yet) the planner guessed a run's entries to be one row, walked them all
through ``uq_entries_run_id_seq`` and parsed each one's text: 2 s a day at 10^4 entries
a run. A stored vector makes every plan cheap: a row is matched and ranked from its
vector, not its text.

- ``entries.search_vector``: a generated ``tsvector`` column, stored, computed by
  PostgreSQL from the title and body when the row is inserted. loopsim never writes it,
  and entries are never updated, so it cannot go stale. Not mapped by the ORM
  (``tests/test_migrations.py`` leaves it out of the comparison), not part of any hash.
- ``ix_entries_search_vector``: a GIN index over it, with ``fastupdate`` off, so new
  entries go straight into the index. With fastupdate on, they wait in a pending list
  that every search reads through until a vacuum (or an insert past
  ``gin_pending_list_limit``) merges it: without autovacuum, up to 4 MB read per query.
- ``ix_entries_fts``, the expression index it replaces, is dropped.

Adding the column rewrites ``entries`` once (every vector is computed), under an
exclusive lock: plan the upgrade for a quiet moment on a large record. SQLite is not
touched; its FTS5 table does this job there.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "ALTER TABLE entries ADD COLUMN search_vector tsvector GENERATED ALWAYS AS "
        "(to_tsvector('english', title || ' ' || body)) STORED"
    )
    op.execute(
        "CREATE INDEX ix_entries_search_vector ON entries USING GIN (search_vector) "
        "WITH (fastupdate = off)"
    )
    op.execute("DROP INDEX IF EXISTS ix_entries_fts")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "CREATE INDEX ix_entries_fts ON entries USING GIN "
        "(to_tsvector('english', title || ' ' || body))"
    )
    op.execute("DROP INDEX IF EXISTS ix_entries_search_vector")
    op.execute("ALTER TABLE entries DROP COLUMN IF EXISTS search_vector")
