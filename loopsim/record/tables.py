"""ORM tables. The schema itself is owned by Alembic (``migrations/``); these classes
must match it, and ``tests/test_migrations.py`` holds them to that.

Entries are append-only: nothing in loopsim updates or deletes a row of ``entries``. A
rollback marks its *days* reverted, so the entries stay for audit and for the hash chain.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Stores naive UTC, hands back aware UTC, on every backend alike."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(32), index=True)
    status_reason: Mapped[str | None] = mapped_column(Text)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    model: Mapped[str] = mapped_column(String(200))
    # Seeds the secret spot-check RNG. Never rendered into a prompt or an export.
    secret_seed: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # Worker leases (loopsim serve): owner, expiry and a fencing generation.
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    lease_generation: Mapped[int] = mapped_column(Integer, default=0)
    # The last day row when the run last became running again (migration 0009): the
    # failed-day streak that fails a run counts only the tries after it.
    resumed_after_day_id: Mapped[int | None] = mapped_column(Integer)
    # A fork (migration 0011, loopsim.record.forks): the run it was forked from, the last
    # day index and the number of entries it took, and the parent's chain hash there. No
    # foreign key: a fork keeps its own copy of the prefix and outlives its parent.
    parent_run_id: Mapped[str | None] = mapped_column(String(26), index=True)
    fork_day: Mapped[int | None] = mapped_column(Integer)
    fork_seq: Mapped[int | None] = mapped_column(Integer)
    fork_head: Mapped[str | None] = mapped_column(String(64))

    days: Mapped[list[Day]] = relationship(back_populates="run", order_by="Day.index")


class Day(Base):
    __tablename__ = "days"
    __table_args__ = (
        # Committed and reverted days hold one index each; failed tries of a day sit at
        # the index they tried, which the next try reuses (migration 0009).
        Index(
            "uq_days_run_id_index_held",
            "run_id",
            "index",
            unique=True,
            sqlite_where=text("status != 'failed'"),
            # postgresql_where too: added by add_postgresql_options() below.
        ),
        Index("ix_days_run_id_status_index", "run_id", "status", "index"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"))
    index: Mapped[int] = mapped_column(Integer)
    external_date: Mapped[dt.date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(32))
    model_id: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(400))
    prompt_hash: Mapped[str] = mapped_column(String(64))
    # The exact messages the researcher saw: for audit and distillation datasets.
    prompt: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    raw_output: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    tokens_in: Mapped[int | None] = mapped_column(Integer)
    tokens_out: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # Who wrote the day: a service's worker id, or "cli"; and under which lease.
    worker: Mapped[str | None] = mapped_column(String(200))
    lease_generation: Mapped[int | None] = mapped_column(Integer)

    run: Mapped[Run] = relationship(back_populates="days")
    entries: Mapped[list[Entry]] = relationship(back_populates="day", order_by="Entry.seq")


class Entry(Base):
    __tablename__ = "entries"
    __table_args__ = (
        UniqueConstraint("run_id", "seq", name="uq_entries_run_id_seq"),
        Index("ix_entries_run_id_kind_seq", "run_id", "kind", "seq"),
        Index("ix_entries_day_id", "day_id"),
        Index("ix_entries_run_id_level_first_day", "run_id", "level", "first_day"),
        Index("ix_entries_run_id_level_last_day", "run_id", "level", "last_day"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"))
    day_id: Mapped[int | None] = mapped_column(ForeignKey("days.id"))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("entries.id"))
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    author: Mapped[str] = mapped_column(String(16))
    model_id: Mapped[str | None] = mapped_column(String(200))
    model_version: Mapped[str | None] = mapped_column(String(400))
    prompt_hash: Mapped[str | None] = mapped_column(String(64))
    external_date: Mapped[dt.date] = mapped_column(Date)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # Digests: their level (1 compresses days, k+1 compresses level-k digests) and the
    # range of days they cover. Critiques: the critic's score. Ideas: flagged as the
    # day's most promising. All hashed when set; None on every other entry.
    level: Mapped[int | None] = mapped_column(Integer)
    first_day: Mapped[int | None] = mapped_column(Integer)
    last_day: Mapped[int | None] = mapped_column(Integer)
    score: Mapped[int | None] = mapped_column(Integer)
    flagged: Mapped[bool | None] = mapped_column(Boolean)
    # A fork's copy of a parent's entry (migration 0011): the run and parent entry id its
    # hash covers, from where it was first written. None on an entry a run wrote itself.
    origin_run_id: Mapped[str | None] = mapped_column(String(26))
    origin_parent_id: Mapped[int | None] = mapped_column(Integer)

    day: Mapped[Day | None] = relationship(back_populates="entries")


class CallRecord(Base):
    """One model call made for a day: exactly what was sent and what came back.

    A day's calls commit with the day; a check-in's probe predictions (role ``probe``)
    are added to the last day it covers. ``task`` groups a call with its retries (the
    day's own report is task 0); ``accepted`` marks the reply that was used. This is the raw
    material of distillation datasets, retries and their feedback included.
    """

    __tablename__ = "calls"
    __table_args__ = (
        UniqueConstraint("day_id", "ordinal", name="uq_calls_day_id_ordinal"),
        # A run's calls of one role (its probe predictions for `run show`), and every
        # call of a run for `run delete` (migration 0008).
        Index("ix_calls_run_id_role", "run_id", "role"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"))
    day_id: Mapped[int] = mapped_column(ForeignKey("days.id"))
    ordinal: Mapped[int] = mapped_column(Integer)
    task: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    depth: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    # The entry this call's accepted reply became (an answer, critique or digest), by seq.
    entry_seq: Mapped[int | None] = mapped_column(Integer)
    messages: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    reply: Mapped[str] = mapped_column(Text)
    accepted: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(Text)
    model_version: Mapped[str | None] = mapped_column(String(400))
    tokens_in: Mapped[int | None] = mapped_column(Integer)
    tokens_out: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int | None] = mapped_column(Integer)


class Probe(Base):
    __tablename__ = "probes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    question: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16))  # spec | researcher | human
    status: Mapped[str] = mapped_column(String(16))  # proposed | accepted | rejected
    proposed_in_entry_id: Mapped[int | None] = mapped_column(ForeignKey("entries.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class CheckIn(Base):
    __tablename__ = "checkins"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)
    first_day_index: Mapped[int] = mapped_column(Integer)
    last_day_index: Mapped[int] = mapped_column(Integer)
    decision: Mapped[str | None] = mapped_column(String(16))
    note: Mapped[str | None] = mapped_column(Text)
    drift_score: Mapped[float | None] = mapped_column(Float)
    # The figures the drift score was read from (migration 0007): mean calibrated
    # agreement, the human's retest ceiling, the EWMA trend, and the similarity's kind.
    agreement: Mapped[float | None] = mapped_column(Float)
    ceiling: Mapped[float | None] = mapped_column(Float)
    trend: Mapped[float | None] = mapped_column(Float)
    similarity: Mapped[str | None] = mapped_column(String(200))
    opened_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    decided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class ProbePair(Base):
    __tablename__ = "probe_pairs"
    __table_args__ = (
        UniqueConstraint("checkin_id", "probe_id", name="uq_probe_pairs_checkin_id_probe_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    checkin_id: Mapped[int] = mapped_column(ForeignKey("checkins.id"))
    probe_id: Mapped[int] = mapped_column(ForeignKey("probes.id"))
    prediction: Mapped[str | None] = mapped_column(Text)
    human_answer: Mapped[str | None] = mapped_column(Text)
    answered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    revealed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    rating: Mapped[int | None] = mapped_column(Integer)
    similarity: Mapped[float | None] = mapped_column(Float)
    is_retest: Mapped[bool] = mapped_column(Boolean, default=False)
    # Calibrated drift (migration 0007): ``similarity`` read between the run's chance
    # level and the human's ceiling (see checkin/calibration.py), and the judge's verdict
    # with every call it took.
    agreement: Mapped[float | None] = mapped_column(Float)
    null_level: Mapped[float | None] = mapped_column(Float)
    ceiling: Mapped[float | None] = mapped_column(Float)
    judge_rating: Mapped[int | None] = mapped_column(Integer)
    judge_reason: Mapped[str | None] = mapped_column(Text)
    judge_calls: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)


class IntegrityCheck(Base):
    """One run of `loopsim db check`: when, how deep, and what it found."""

    __tablename__ = "integrity_checks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    checked_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    quick: Mapped[bool] = mapped_column(Boolean)
    ok: Mapped[bool] = mapped_column(Boolean)
    problems: Mapped[int] = mapped_column(Integer)
    runs: Mapped[int] = mapped_column(Integer)
    entries: Mapped[int] = mapped_column(Integer)
    loopsim_version: Mapped[str] = mapped_column(String(32))


def add_postgresql_options() -> None:
    """Give the tables their PostgreSQL-only options: the ``WHERE`` of the partial unique
    index on days. Naming a ``postgresql_*`` option makes SQLAlchemy import its whole
    PostgreSQL dialect to check it, which every command on SQLite would pay at start-up;
    so :func:`loopsim.record.db.make_engine` adds it before it builds a PostgreSQL engine,
    ahead of any DDL or schema comparison that reads it. Calling it again changes nothing.
    """
    table = Day.__table__
    assert isinstance(table, Table)
    (index,) = (each for each in table.indexes if each.name == "uq_days_run_id_index_held")
    index.dialect_kwargs["postgresql_where"] = text("status != 'failed'")
