"""Every error loopsim raises on purpose.

The tree::

    LoopsimError
    ├── SpecError               a run spec or a flag is invalid (exit 2)
    ├── DatabaseError
    │   ├── DatabaseMissing     no database at that URL; `loopsim db upgrade` creates one
    │   ├── SchemaOutdated      the schema is behind; `loopsim db upgrade` brings it up
    │   ├── SchemaTooNew        the database was written by a newer loopsim
    │   ├── DatabaseCorrupt     the file is not a readable loopsim database
    │   └── DatabaseBusy        another process held the write lock past the timeout
    ├── NotFound                no run (or day, entry...) by that id
    ├── InvalidState            the run's status does not allow this (paused, halted...)
    ├── ConcurrentWrite         another writer committed the same day first
    ├── LeaseLost               this worker's lease on the run expired or was taken over
    ├── ModelError
    │   ├── ModelUnavailable    the model could not be built or reached
    │   └── ModelOutputInvalid  the reply could not be parsed into a DayReport
    └── RecordBroken            `record verify` found a broken link in the hash chain

Each class's docstring is its default message. Messages name the command that fixes the
problem where there is one. The CLI prints ``error: <message>`` on one line and exits with
``exit_code``; a traceback means a bug.

Exit codes: 0 done; 1 an error; 2 a bad spec, flag or input file; 3 `run step` stopped
at a check-in (or found the run already waiting at one) and the run waits for a human
(not an error: nothing failed); 130
interrupted by Ctrl-C.
"""

from __future__ import annotations

EXIT_AT_CHECKIN = 3
"""`run step` stopped because a check-in is open; scripts can tell this from N days done."""
EXIT_INTERRUPTED = 130
"""Ctrl-C stopped the command (128 + SIGINT, as a shell reports it): `run step` too, when a
first Ctrl-C let the day in flight finish but left days of those asked for undone."""


class LoopsimError(Exception):
    """loopsim failed."""

    exit_code: int = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class SpecError(LoopsimError):
    """The run spec is invalid."""

    exit_code = 2


class DatabaseError(LoopsimError):
    """The database cannot be used."""


class DatabaseMissing(DatabaseError):
    """No database there; create it with `loopsim db upgrade`."""


class SchemaOutdated(DatabaseError):
    """The database schema is behind this loopsim; run `loopsim db upgrade`."""


class SchemaTooNew(DatabaseError):
    """The database was written by a newer loopsim; upgrade loopsim itself."""


class DatabaseCorrupt(DatabaseError):
    """The file is not a readable loopsim database; it was left untouched."""


class DatabaseReadOnly(DatabaseError):
    """The database file cannot be written here; nothing was written."""


class DatabaseBusy(DatabaseError):
    """The database stayed locked by another writer past the timeout; try again."""


class NotFound(LoopsimError):
    """Nothing by that id; `loopsim run list` shows the runs."""


class InvalidState(LoopsimError):
    """The run's status does not allow that."""


class ConcurrentWrite(LoopsimError):
    """Another process committed this day first; nothing was written twice."""


class LeaseLost(LoopsimError):
    """This worker's lease on the run expired or was taken over; nothing was written."""


class Interrupted(LoopsimError):
    """Stopped part way at the caller's request (a service stopping); what it had done is
    kept, nothing after it was written."""


class ModelError(LoopsimError):
    """The model failed."""


class ModelUnavailable(ModelError):
    """The model could not be built or reached."""

    # What the failed call cost, set where it failed (ChatHandle): the requests sent,
    # retries included, and the milliseconds spent on them, backoff waits included. A
    # model that could not be built cost nothing. ``folded``: the messages went with
    # system text folded into the first user turn, as :class:`~loopsim.chat.handle.Reply`.
    attempts: int = 0
    latency_ms: int = 0
    folded: bool = False


class ModelOutputInvalid(ModelError):
    """The model's reply is not a valid DayReport."""


class RecordBroken(LoopsimError):
    """The record's hash chain is broken."""
