"""Calls: every model call a day made, exactly as sent and received, retries included.

A day's calls commit with the day. The loop hands over what the researcher's
conversation logged (anything shaped like :class:`LoggedCall`), and the rows are built
here, so no layer above the record builds one field by field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sqlalchemy import select

from loopsim.record.base import StoreBase
from loopsim.record.tables import CallRecord, Day, Entry


class LoggedCall(Protocol):
    """One model call as the researcher's conversation logged it. ``item`` is the index,
    in the day's batch of entries, of the entry an accepted reply became."""

    @property
    def task(self) -> int: ...
    @property
    def role(self) -> str: ...
    @property
    def depth(self) -> int: ...
    @property
    def attempt(self) -> int: ...
    @property
    def messages(self) -> list[dict[str, str]]: ...
    @property
    def reply(self) -> str: ...
    @property
    def accepted(self) -> bool: ...
    @property
    def error(self) -> str | None: ...
    @property
    def model_version(self) -> str: ...
    @property
    def tokens_in(self) -> int | None: ...
    @property
    def tokens_out(self) -> int | None: ...
    @property
    def latency_ms(self) -> int: ...
    @property
    def item(self) -> int | None: ...


class CallQueries(StoreBase):
    """Writing a day's calls, and reading them back in order."""

    def add_calls(
        self, day: Day, calls: Sequence[LoggedCall], entries: Sequence[Entry]
    ) -> list[CallRecord]:
        """Add the day's calls, numbered from 1 in the order they were made; a call whose
        reply became an entry names it by the seq of ``entries[call.item]``."""
        records = []
        for ordinal, call in enumerate(calls, 1):
            record = CallRecord(
                run_id=day.run_id,
                day_id=day.id,
                ordinal=ordinal,
                task=call.task,
                role=call.role,
                depth=call.depth,
                attempt=call.attempt,
                entry_seq=entries[call.item].seq if call.item is not None and entries else None,
                messages=call.messages,
                reply=call.reply,
                accepted=call.accepted,
                error=call.error,
                model_version=call.model_version,
                tokens_in=call.tokens_in,
                tokens_out=call.tokens_out,
                latency_ms=call.latency_ms,
            )
            self.session.add(record)
            records.append(record)
        self.session.flush()
        return records

    def day_calls(self, day_id: int) -> Sequence[CallRecord]:
        """Every model call a day made, retries included, in the order they were made."""
        return self.session.scalars(
            select(CallRecord).where(CallRecord.day_id == day_id).order_by(CallRecord.ordinal)
        ).all()
