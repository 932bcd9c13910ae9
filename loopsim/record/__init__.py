"""The record: the only code that touches a Session, SQLAlchemy or Alembic."""
