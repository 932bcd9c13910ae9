"""The worker's lease checks, batched: one read answers every check asked before it
began, on a real SQLite database through the real ``check_many``."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence

import pytest

from loopsim.errors import DatabaseBusy, LeaseLost, LoopsimError, NotFound
from loopsim.record import leases
from loopsim.record.leases import Lease
from loopsim.record.store import Store
from loopsim.service.checks import LeaseChecks
from tests.test_lease import expire, make_running

TTL = dt.timedelta(seconds=30)


class Reads:
    """``check_many`` on the database, with the leases of each read kept, and a gate a
    test may close to hold a read in flight."""

    def __init__(self, database) -> None:
        self.database = database
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_with: Exception | None = None

    async def __call__(self, batch: Sequence[Lease]) -> dict[str, LoopsimError]:
        self.batches.append([lease.run_id for lease in batch])
        await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return leases.check_many(self.database, batch)


async def _read_in_flight(checks: LeaseChecks, reads: Reads, lease: Lease) -> asyncio.Future:
    """Ask a check and return once its read has begun, held at the closed gate."""
    reads.gate.clear()
    asked = asyncio.ensure_future(checks.check(lease))
    while not reads.batches:
        await asyncio.sleep(0)
    return asked


def _claimed(database, spec, n: int) -> list[Lease]:
    make_running(database, spec, n)
    return sorted(leases.claim(database, "w", TTL, n), key=lambda lease: lease.run_id)


def test_checks_asked_together_share_one_read(database, spec):
    held = _claimed(database, spec, 12)
    reads = Reads(database)

    async def main() -> None:
        checks = LeaseChecks(reads)
        await asyncio.gather(*(checks.check(lease) for lease in held))
        assert checks.reads == 1

    asyncio.run(main())
    assert reads.batches == [[lease.run_id for lease in held]]


def test_each_check_gets_its_own_lease_s_answer(database, spec):
    live, expired, taken, gone = _claimed(database, spec, 4)
    expire(database, expired.run_id)
    expire(database, taken.run_id)
    leases.claim(database, "other", TTL, 1, exclude=[expired.run_id])
    with database.write() as session:
        Store(session).delete_run(gone.run_id)
    reads = Reads(database)

    async def main() -> list[BaseException | None]:
        checks = LeaseChecks(reads)
        return await asyncio.gather(
            *(checks.check(lease) for lease in (live, expired, taken, gone)),
            return_exceptions=True,
        )

    ok, lost_expired, lost_taken, missing = asyncio.run(main())
    assert ok is None
    assert isinstance(lost_expired, LeaseLost)
    assert "expired" in lost_expired.message
    assert isinstance(lost_taken, LeaseLost)
    assert "held by other" in lost_taken.message
    assert isinstance(missing, NotFound)
    assert len(reads.batches) == 1


def test_a_check_asked_during_a_read_waits_for_a_read_begun_after_it(database, spec):
    first, second = _claimed(database, spec, 2)
    reads = Reads(database)

    async def main() -> None:
        checks = LeaseChecks(reads)
        early = await _read_in_flight(checks, reads, first)
        # The lease expires now, after that read began: the check asked next must see it.
        expire(database, second.run_id)
        late = asyncio.ensure_future(checks.check(second))
        await asyncio.sleep(0)
        reads.gate.set()
        await early
        with pytest.raises(LeaseLost, match="expired"):
            await late
        assert checks.reads == 2

    asyncio.run(main())
    assert reads.batches == [[first.run_id], [second.run_id]]


def test_a_failed_read_fails_its_checks_and_the_next_read_is_asked_afresh(database, spec):
    held = _claimed(database, spec, 3)
    reads = Reads(database)

    async def main() -> None:
        checks = LeaseChecks(reads)
        reads.fail_with = DatabaseBusy("database is locked")
        results = await asyncio.gather(
            *(checks.check(lease) for lease in held), return_exceptions=True
        )
        assert all(isinstance(r, DatabaseBusy) for r in results)
        reads.fail_with = None
        await asyncio.gather(*(checks.check(lease) for lease in held))

    asyncio.run(main())
    assert len(reads.batches) == 2


def test_a_cancelled_check_leaves_the_others_answered(database, spec):
    first, second = _claimed(database, spec, 2)
    reads = Reads(database)

    async def main() -> None:
        checks = LeaseChecks(reads)
        reads.gate.clear()
        gone = asyncio.ensure_future(checks.check(first))
        kept = asyncio.ensure_future(checks.check(second))
        while not reads.batches:
            await asyncio.sleep(0)
        gone.cancel()
        reads.gate.set()
        await kept
        with pytest.raises(asyncio.CancelledError):
            await gone

    asyncio.run(main())


def test_stopping_the_reader_leaves_no_check_waiting_forever(database, spec):
    first, second = _claimed(database, spec, 2)
    reads = Reads(database)

    async def main() -> None:
        checks = LeaseChecks(reads)
        in_read = await _read_in_flight(checks, reads, first)
        queued = asyncio.ensure_future(checks.check(second))
        await asyncio.sleep(0)
        assert checks._reader is not None
        checks._reader.cancel()
        done, pending = await asyncio.wait({in_read, queued}, timeout=60)
        assert not pending
        assert all(task.cancelled() for task in done)

    asyncio.run(main())


def test_a_reader_stopped_before_it_began_leaves_no_check_waiting(database, spec):
    """On SQLite the read does not suspend, so a cancel can only reach the reader before
    its first step, where its own cleanup never runs."""
    (held,) = _claimed(database, spec, 1)

    async def read(batch: Sequence[Lease]) -> dict[str, LoopsimError]:
        return leases.check_many(database, batch)  # synchronous, as on SQLite

    async def main() -> None:
        checks = LeaseChecks(read)
        asked = asyncio.ensure_future(checks.check(held))
        await asyncio.sleep(0)  # the check is asked and its reader made, not yet run
        assert checks._reader is not None
        checks._reader.cancel()
        _, pending = await asyncio.wait({asked}, timeout=60)
        assert not pending
        assert asked.cancelled()
        await checks.check(held)  # a later check gets a reader of its own

    asyncio.run(main())
