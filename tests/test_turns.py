"""The worker's count of runs waiting for a slot (loopsim/service/turns.py): one read for
all of its runs, and one slot given up per waiting run."""

from __future__ import annotations

import asyncio

import pytest

from loopsim.errors import DatabaseError
from loopsim.service.turns import WaitingRuns


class Reads:
    """A read of the waiting count that answers from a list and counts its calls; each
    read waits on ``gate`` first, so tests can hold it in flight."""

    def __init__(self, *answers: int | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self) -> int:
        self.calls += 1
        await self.gate.wait()
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_one_waiting_run_takes_one_slot_of_many_asking_at_once():
    async def main() -> tuple[list[bool], int]:
        reads = Reads(1)
        turns = WaitingRuns(reads, fresh=3600)
        reads.gate.clear()
        asking = [asyncio.ensure_future(turns.take()) for _ in range(10)]
        await asyncio.sleep(0)
        reads.gate.set()
        return list(await asyncio.gather(*asking)), reads.calls

    answers, calls = asyncio.run(main())
    assert calls == 1
    assert answers.count(True) == 1


def test_the_count_is_read_again_once_the_window_has_passed():
    async def main() -> tuple[list[bool], int]:
        reads = Reads(0, 2, 0)
        turns = WaitingRuns(reads, fresh=0)  # every ask is past the window
        answers = [await turns.take() for _ in range(3)]
        return answers, reads.calls

    assert asyncio.run(main()) == ([False, True, False], 3)


def test_within_the_window_nothing_is_read_again():
    async def main() -> tuple[list[bool], int]:
        reads = Reads(2)
        turns = WaitingRuns(reads, fresh=3600)
        return [await turns.take() for _ in range(4)], reads.calls

    assert asyncio.run(main()) == ([True, True, False, False], 1)


def test_a_failed_read_is_the_askers_error_and_the_next_ask_reads_again():
    async def main() -> tuple[bool, int]:
        reads = Reads(DatabaseError("database is locked"), 1)
        turns = WaitingRuns(reads, fresh=3600)
        with pytest.raises(DatabaseError, match="locked"):
            await turns.take()
        return await turns.take(), reads.calls

    assert asyncio.run(main()) == (True, 2)


def test_a_cancelled_asker_leaves_the_read_to_the_others():
    async def main() -> tuple[bool, int]:
        reads = Reads(1)
        turns = WaitingRuns(reads, fresh=3600)
        reads.gate.clear()
        first = asyncio.ensure_future(turns.take())
        second = asyncio.ensure_future(turns.take())
        await asyncio.sleep(0)
        first.cancel()
        reads.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await second, reads.calls

    assert asyncio.run(main()) == (True, 1)
