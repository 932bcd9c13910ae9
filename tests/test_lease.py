"""Leases on both databases: claims, expiry by the database clock, fencing, release."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from sqlalchemy import func, select

from loopsim.errors import InvalidState, LeaseLost, NotFound
from loopsim.loop import Loop
from loopsim.record import leases as lease
from loopsim.record.store import Store
from loopsim.record.tables import Day, Run, utcnow
from loopsim.schemas import RunStatus
from loopsim.testing import scripted_factory
from tests.conftest import make_run

TTL = dt.timedelta(seconds=30)


def make_running(database, spec, n=1) -> list[str]:
    ids = []
    for _ in range(n):
        run_id = make_run(database, spec)
        with database.write() as session:
            store = Store(session)
            store.set_status(store.get_run(run_id), RunStatus.RUNNING)
        ids.append(run_id)
    return ids


def expire(database, run_id) -> None:
    """Move the lease's expiry into the past, as if its worker froze past it."""
    with database.write() as session:
        run = Store(session).get_run(run_id)
        run.lease_expires_at = Store(session).db_now() - dt.timedelta(seconds=1)


def test_database_clock_is_utc_and_moves(any_db):
    with any_db.read() as session:
        first = Store(session).db_now()
    time.sleep(0.02)
    with any_db.read() as session:
        second = Store(session).db_now()
    assert first.tzinfo == dt.UTC
    assert second > first
    assert abs((first - utcnow()).total_seconds()) < 5  # same machine, same clock here


def test_a_claimed_run_is_not_claimed_again_until_released(any_db, spec):
    (run_id,) = make_running(any_db, spec)
    (a,) = lease.claim(any_db, "worker-a", TTL, 5)
    assert (a.run_id, a.owner, a.generation) == (run_id, "worker-a", 1)
    assert lease.claim(any_db, "worker-b", TTL, 5) == []
    lease.release(any_db, [a])
    (b,) = lease.claim(any_db, "worker-b", TTL, 5)
    assert (b.owner, b.generation) == ("worker-b", 2)


def test_held_elsewhere_names_the_live_leases_of_other_workers(any_db, spec):
    mine, gone_a, gone_b, stale, stepped = make_running(any_db, spec, 5)
    lease.claim(any_db, "me", TTL, 1, exclude=[gone_a, gone_b, stale, stepped])
    lease.claim(any_db, "gone", TTL, 2, exclude=[mine, stale, stepped])
    lease.claim(any_db, "stale", TTL, 1, exclude=[mine, gone_a, gone_b, stepped])
    expire(any_db, stale)  # an expired lease is claimable now: nothing to wait for
    with any_db.write() as session:
        lease.take_for_cli(Store(session).get_run(stepped))  # run step's mark: no expiry
        now = Store(session).db_now()
    held = lease.held_elsewhere(any_db, "me")
    assert [(owner, runs) for owner, runs, _ in held] == [("gone", 2)]
    assert held[0][2] > now
    assert [owner for owner, _, _ in lease.held_elsewhere(any_db, "gone")] == ["me"]


def test_only_running_runs_are_claimed(any_db, spec):
    make_run(any_db, spec)  # created, not started
    (paused,) = make_running(any_db, spec)
    with any_db.write() as session:
        store = Store(session)
        store.set_status(store.get_run(paused), RunStatus.PAUSED)
    assert lease.claim(any_db, "w", TTL, 5) == []


def test_claim_respects_its_limit_and_exclusions(any_db, spec):
    ids = make_running(any_db, spec, 3)
    first = lease.claim(any_db, "w", TTL, 2)
    assert len(first) == 2
    # A restarted worker with the same id may take its own runs back at once, but a live
    # worker excludes the runs it is already stepping.
    again = lease.claim(any_db, "w", TTL, 5, exclude=[x.run_id for x in first])
    assert [x.run_id for x in again] == [i for i in ids if i not in {x.run_id for x in first}]


def test_an_expired_lease_is_taken_over_and_the_old_holder_is_fenced_out(any_db, spec):
    (run_id,) = make_running(any_db, spec)
    factory, _ = scripted_factory()
    loop = Loop(any_db, _settings(), factory)
    (old,) = lease.claim(any_db, "sleepy", TTL, 1)
    planned = loop.plan(run_id)
    outcome = loop.researcher(planned).work(planned.prompt, salt=planned.index)
    expire(any_db, run_id)  # "sleepy" froze past its lease...
    (new,) = lease.claim(any_db, "awake", TTL, 1)
    assert new.generation == old.generation + 1
    # ...and wakes up with a finished day in hand: it must not be written.
    with pytest.raises(LeaseLost, match="lost"):
        loop.commit(planned, outcome, utcnow(), fence=lease.fence(old), worker="sleepy")
    with any_db.read() as session:
        assert session.scalar(select(func.count()).select_from(Day)) == 0
    assert lease.renew(any_db, [old], TTL) == [old]  # its heartbeat finds out too
    loop.commit(planned, outcome, utcnow(), fence=lease.fence(new), worker="awake")
    with any_db.read() as session:
        (day,) = session.scalars(select(Day)).all()
    assert (day.worker, day.lease_generation) == ("awake", None)


def test_an_expired_lease_fences_its_holder_even_if_nobody_took_over(any_db, spec):
    (run_id,) = make_running(any_db, spec)
    (held,) = lease.claim(any_db, "w", TTL, 1)
    expire(any_db, run_id)
    with any_db.write() as session:
        store = Store(session)
        run = store.get_run(run_id)
        with pytest.raises(LeaseLost, match="expired"):
            lease.fence(held)(store, run)


def test_renew_extends_by_the_database_clock(any_db, spec):
    (run_id,) = make_running(any_db, spec)
    (held,) = lease.claim(any_db, "w", dt.timedelta(seconds=5), 1)
    assert lease.renew(any_db, [held], dt.timedelta(seconds=600)) == []
    with any_db.read() as session:
        store = Store(session)
        left = store.get_run(run_id).lease_expires_at - store.db_now()
    assert dt.timedelta(seconds=590) < left <= dt.timedelta(seconds=600)


def test_cli_step_refuses_a_run_a_worker_holds(any_db, spec):
    (run_id,) = make_running(any_db, spec)
    lease.claim(any_db, "service-1", TTL, 1)
    factory, model = scripted_factory()
    with pytest.raises(InvalidState, match="being stepped by worker service-1"):
        Loop(any_db, _settings(), factory).run_days(run_id, 1)
    assert model.calls == []
    with any_db.read() as session:
        assert Store(session).get_run(run_id).lease_owner == "service-1"


def test_release_leaves_a_lease_taken_over_by_another_alone(any_db, spec):
    (run_id,) = make_running(any_db, spec)
    (old,) = lease.claim(any_db, "a", TTL, 1)
    expire(any_db, run_id)
    lease.claim(any_db, "b", TTL, 1)
    lease.release(any_db, [old])
    with any_db.read() as session:
        assert session.get(Run, run_id).lease_owner == "b"


def _settings():
    from loopsim.config import Settings

    return Settings()


def test_a_released_run_queues_behind_the_runs_that_waited_longer(any_db, spec):
    """Issue 18: claims rotate. A release stamps the run, so the next claim takes a run
    that has been waiting instead of the one just given back."""
    ids = make_running(any_db, spec, 3)
    first = lease.claim(any_db, "w", TTL, 2)
    assert [x.run_id for x in first] == ids[:2]
    lease.release(any_db, first[:1])  # ids[0] yields its slot
    (nxt,) = lease.claim(any_db, "w", TTL, 1, exclude=[first[1].run_id])
    assert nxt.run_id == ids[2]
    with any_db.read() as session:
        store = Store(session)
        now = store.db_now()
        assert store.waiting_runs("w", now, exclude=[ids[1], ids[2]]) == 1
        assert store.waiting_runs("w", now, exclude=ids) == 0
        assert store.waiting_runs("other", now) == 1  # only the released one is free


def test_check_reads_the_lease_off_the_database_before_a_model_call(any_db, spec):
    (run_id,) = make_running(any_db, spec)
    (held,) = lease.claim(any_db, "w", TTL, 1)
    lease.check(any_db, held)  # live and ours: no error
    expire(any_db, run_id)
    with pytest.raises(LeaseLost, match="expired"):
        lease.check(any_db, held)
    lease.claim(any_db, "other", TTL, 1)
    with pytest.raises(LeaseLost, match="held by other"):
        lease.check(any_db, held)


def test_check_many_answers_every_lease_from_one_read(any_db, spec):
    live, expired, taken, gone = make_running(any_db, spec, 4)
    held = {h.run_id: h for h in lease.claim(any_db, "w", TTL, 4)}
    expire(any_db, expired)
    expire(any_db, taken)
    lease.claim(any_db, "other", TTL, 1, exclude=[expired])  # takes the other expired one
    with any_db.write() as session:
        Store(session).delete_run(gone)
    refused = lease.check_many(any_db, list(held.values()))
    assert sorted(refused) == sorted([expired, taken, gone])
    assert isinstance(refused[expired], LeaseLost)
    assert "expired" in refused[expired].message
    assert isinstance(refused[taken], LeaseLost)
    assert "held by other" in refused[taken].message
    assert isinstance(refused[gone], NotFound)
    with pytest.raises(NotFound):  # one lease alone asks the same way
        lease.check(any_db, held[gone])
    lease.check(any_db, held[live])
    assert lease.check_many(any_db, []) == {}


def _day_in_hand(database, run_id):
    factory, _ = scripted_factory()
    loop = Loop(database, _settings(), factory)
    planned = loop.plan(run_id)
    return loop, planned, loop.researcher(planned).work(planned.prompt, salt=planned.index)


def _no_days(database) -> bool:
    with database.read() as session:
        return session.scalar(select(func.count()).select_from(Day)) == 0


def test_a_commit_after_expiry_by_the_database_clock_is_refused(any_db, spec):
    """Issue 18 item 5: the fence reads expiry off the database's clock inside the commit
    transaction, with the run row locked; nobody need have taken the run over."""
    (run_id,) = make_running(any_db, spec)
    (held,) = lease.claim(any_db, "w", TTL, 1)
    loop, planned, outcome = _day_in_hand(any_db, run_id)
    expire(any_db, run_id)  # a DB-side timestamp one second in the past
    with pytest.raises(LeaseLost, match="expired"):
        loop.commit(planned, outcome, utcnow(), fence=lease.fence(held), worker="w")
    assert _no_days(any_db)
    with any_db.read() as session:
        assert session.get(Run, run_id).lease_owner == "w"  # nobody took it: still refused


def test_a_lease_that_expires_during_the_commit_transaction_is_refused(any_db, spec, monkeypatch):
    """Issue 18 item 5: a worker frozen inside its commit transaction, after the fence
    passed, woke and committed on a lease that had expired meanwhile. The fence is checked
    again as the transaction's last statement, by the database's clock then."""
    (run_id,) = make_running(any_db, spec)
    ttl = dt.timedelta(seconds=2)
    (held,) = lease.claim(any_db, "w", ttl, 1)
    loop, planned, outcome = _day_in_hand(any_db, run_id)
    lease.renew(any_db, [held], ttl)  # live when the commit begins
    add_calls = Store.add_calls

    def frozen(self, *args, **kwargs):
        time.sleep(ttl.total_seconds() + 0.5)  # past the expiry, by any clock
        return add_calls(self, *args, **kwargs)

    monkeypatch.setattr(Store, "add_calls", frozen)
    with pytest.raises(LeaseLost, match="expired"):
        loop.commit(planned, outcome, utcnow(), fence=lease.fence(held), worker="w")
    assert _no_days(any_db)
