"""Alembic environment. ``loopsim db upgrade`` passes its own connection in
``config.attributes["connection"]``; the ``alembic`` command builds one from the URL."""

from __future__ import annotations

from alembic import context

from loopsim.record.tables import Base, add_postgresql_options

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    if connection.dialect.name == "postgresql":
        add_postgresql_options()  # the partial index's WHERE, for autogenerate to compare
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from loopsim.record.db import make_engine, normalize_url

    engine = make_engine(normalize_url(config.get_main_option("sqlalchemy.url") or ""))
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("loopsim migrations run online only")
run_migrations_online()
