"""The keyed chain (LOOPSIM_CHAIN_KEY) and the refusal to step a record that fails
verification."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import sqlite3
from collections.abc import Iterator

import pytest
from sqlalchemy import select, text

from loopsim.config import Settings
from loopsim.errors import RecordBroken
from loopsim.ids import canonical_json
from loopsim.record import db as dbmod
from loopsim.record.chain import GENESIS, chain_genesis, entry_hash
from loopsim.record.store import EntryInput, Store
from loopsim.record.tables import Day, Entry
from loopsim.testing import add_day, scripted_factory
from tests.conftest import make_run, write_spec
from tests.test_cli import GOOD_SPEC

KEY = b"correct horse battery staple"
DATE = dt.date(2025, 6, 2)


def pinned_entry() -> Entry:
    return Entry(
        run_id="run_pinned",
        seq=2,
        parent_id=None,
        kind="note",
        title="A title",
        body="Bees é 🐝",
        author="researcher",
        model_id="m",
        model_version="m-1",
        prompt_hash="p" * 64,
        external_date=DATE,
        created_at=dt.datetime(2025, 6, 2, 12, 30, 1, 123456, tzinfo=dt.UTC),
        prev_hash="a" * 64,
        level=None,
        first_day=None,
        last_day=None,
        score=None,
        flagged=None,
    )


def test_plain_hashes_are_byte_identical_to_before_the_key_existed():
    # Computed by the code before LOOPSIM_CHAIN_KEY: every record written depends on them.
    entry = pinned_entry()
    assert entry_hash(entry, 1) == (
        "f8622dd6c747ba265e6862a57d4d75fd8e54c3e091d7493292f87d3649887cca"
    )
    entry.level, entry.first_day, entry.last_day, entry.flagged = 1, 1, 3, False
    assert entry_hash(entry, None) == (
        "bc6214f0c72d416d595d97f6b728b9a12353fa72e507246128c02b3f98b46299"
    )
    assert chain_genesis("run_pinned", None) == GENESIS


def test_a_keyed_hash_is_the_hmac_of_the_same_bytes():
    entry = pinned_entry()
    keyed = entry_hash(entry, 1, KEY)
    assert keyed != entry_hash(entry, 1)
    assert entry_hash(entry, 1, b"another key") != keyed
    payload = canonical_json(
        {
            "v": 1,
            "run_id": "run_pinned",
            "seq": 2,
            "day_index": 1,
            "parent_id": None,
            "kind": "note",
            "title": "A title",
            "body": "Bees é 🐝",
            "author": "researcher",
            "model_id": "m",
            "model_version": "m-1",
            "prompt_hash": "p" * 64,
            "external_date": "2025-06-02",
            "created_at": "2025-06-02T12:30:01.123456Z",
            "prev_hash": "a" * 64,
        }
    )
    assert keyed == hmac.new(KEY, payload, hashlib.sha256).hexdigest()


@pytest.fixture
def keyed_db(sqlite_url: str) -> Iterator[dbmod.Database]:
    database = dbmod.Database.open(sqlite_url, chain_key=KEY)
    yield database
    database.dispose()


def fill(database: dbmod.Database, run_id: str, days: int) -> None:
    for index in range(1, days + 1):
        with database.write() as session:
            store = Store(session)
            day = add_day(store, run_id, index)
            items = [EntryInput("note", f"Day {index} note {k}", f"Body {k}") for k in range(2)]
            store.append_entries(run_id, items, day=day, external_date=DATE)


def test_a_keyed_run_starts_from_the_keyed_genesis_and_verifies_only_with_its_key(
    keyed_db, database, spec
):
    run_id = make_run(keyed_db, spec)
    fill(keyed_db, run_id, days=2)
    with keyed_db.read() as session:
        store = Store(session)
        assert store.first_prev_hash(run_id) == chain_genesis(run_id, KEY) != GENESIS
        result = store.verify_chain(run_id)
    assert result.ok
    assert result.keyed
    assert result.checked == 4
    with database.read() as session:  # the same file, opened without the key
        unkeyed = Store(session).verify_chain(run_id)
    assert unkeyed.needs_key
    assert not unkeyed.ok
    other = dbmod.Database.open(keyed_db.where, chain_key=b"some other key")
    try:
        with other.read() as session:
            wrong = Store(session).verify_chain(run_id)
        assert wrong.broken is not None
        assert wrong.broken.seq == 1
        assert "another key" in wrong.broken.reason
        with pytest.raises(RecordBroken, match="not the key"):
            append_one(other, run_id)
    finally:
        other.dispose()
    with pytest.raises(RecordBroken, match="set LOOPSIM_CHAIN_KEY"):
        append_one(database, run_id)


def append_one(database: dbmod.Database, run_id: str) -> None:
    with database.write() as session:
        Store(session).append_entries(
            run_id, [EntryInput("note", "x", "y")], day=None, external_date=DATE
        )


def test_an_entry_inserted_with_a_recomputed_plain_hash_fails_when_a_key_is_set(keyed_db, spec):
    run_id = make_run(keyed_db, spec)
    fill(keyed_db, run_id, days=2)
    with keyed_db.write() as session:
        last, day_index = session.execute(
            select(Entry, Day.index)
            .join(Day, Entry.day_id == Day.id)
            .where(Entry.run_id == run_id)
            .order_by(Entry.seq.desc())
            .limit(1)
        ).one()
        forged = Entry(
            run_id=run_id,
            day_id=last.day_id,
            seq=last.seq + 1,
            kind="note",
            title="Forged",
            body="Inserted by hand, with its hash recomputed as plain SHA-256.",
            author="researcher",
            external_date=DATE,
            created_at=last.created_at,
            prev_hash=last.hash,
            hash="",
        )
        forged.hash = entry_hash(forged, day_index)
        session.add(forged)
    with keyed_db.read() as session:
        result = Store(session).verify_chain(run_id)
    assert result.broken is not None
    assert result.broken.seq == 5
    assert "keyed hash" in result.broken.reason
    assert result.checked == 4


def test_a_plain_run_stays_plain_when_the_key_is_set_later(database, keyed_db, spec):
    run_id = make_run(database, spec)
    fill(database, run_id, days=1)
    fill_more = EntryInput("note", "later", "written with the key set")
    with keyed_db.write() as session:
        Store(session).append_entries(run_id, [fill_more], day=None, external_date=DATE)
    for db in (database, keyed_db):
        with db.read() as session:
            result = Store(session).verify_chain(run_id)
        assert result.ok
        assert not result.keyed
        assert result.checked == 3


def test_the_key_is_never_shown(sqlite_url):
    settings = Settings(database_url=sqlite_url, chain_key="s3cret-chain-key")
    assert "s3cret" not in repr(settings)
    assert "s3cret" not in str(settings.model_dump())
    database = dbmod.Database.open(sqlite_url, chain_key=b"s3cret-chain-key")
    try:
        assert "s3cret" not in repr(database)
    finally:
        database.dispose()


def test_record_verify_with_and_without_the_key(cli_factory, sqlite_url, tmp_path):
    factory, _ = scripted_factory()
    keyed = cli_factory(sqlite_url, factory, chain_key=KEY.decode())
    run_id = keyed("run", "create", str(write_spec(tmp_path / "s.toml", GOOD_SPEC))).stdout.strip()
    assert keyed("run", "step", run_id, "--days", "2").exit_code == 0
    verified = keyed("record", "verify", run_id)
    assert verified.exit_code == 0, verified.output
    assert "keyed (HMAC-SHA256)" in verified.stdout
    plain = cli_factory(sqlite_url, factory)("record", "verify", run_id)
    assert plain.exit_code == 1
    assert plain.stderr.strip() == (
        f"error: run {run_id}: this run's chain is keyed; set LOOPSIM_CHAIN_KEY to verify it"
    )
    stepped = cli_factory(sqlite_url, factory)("run", "step", run_id)
    assert stepped.exit_code == 1
    assert "set LOOPSIM_CHAIN_KEY" in stepped.stderr.strip().splitlines()[-1]


def test_run_step_refuses_a_run_whose_chain_does_not_verify(cli_factory, sqlite_url, tmp_path):
    factory, _ = scripted_factory()
    cli = cli_factory(sqlite_url, factory)
    run_id = cli("run", "create", str(write_spec(tmp_path / "s.toml", GOOD_SPEC))).stdout.strip()
    assert cli("run", "step", run_id, "--days", "2").exit_code == 0
    with sqlite3.connect(sqlite_url) as conn:
        conn.execute("UPDATE entries SET body = 'rewritten history' WHERE seq = 1")
        days_before = conn.execute("SELECT count(*) FROM days").fetchone()[0]
    result = cli("run", "step", run_id)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ")
    assert f"`loopsim record verify {run_id}`" in lines[-1]
    assert "seq 1" in lines[-1]
    assert "Traceback" not in result.output
    with sqlite3.connect(sqlite_url) as conn:
        assert conn.execute("SELECT count(*) FROM days").fetchone()[0] == days_before


def test_a_loop_verifies_the_whole_chain_once_then_only_new_entries(database, spec):
    from loopsim.loop import Loop

    run_id = make_run(database, spec)
    fill(database, run_id, days=2)
    factory, _ = scripted_factory()
    loop = Loop(database, Settings(database_url="x.db"), factory)
    with database.read() as session:
        loop.check_chain(Store(session), run_id)
    assert loop.chains.points[run_id].seq == 4
    append_one(database, run_id)
    with database.write() as session:
        session.execute(text("UPDATE entries SET body = 'edited' WHERE seq = 5"))
    with database.read() as session, pytest.raises(RecordBroken, match="seq 5"):
        loop.check_chain(Store(session), run_id)


def test_a_loop_skips_rereading_only_the_entries_it_chained_itself(database, spec):
    from loopsim.loop import Loop

    run_id = make_run(database, spec)
    factory, _ = scripted_factory()
    loop = Loop(database, Settings(database_url="x.db"), factory)
    loop.start(run_id)
    assert loop.step(run_id) is not None
    with database.read() as session:
        head = Store(session).chain_head(run_id)
    assert (loop.chains.points[run_id].seq, loop.chains.points[run_id].hash) == head
    # An entry another process chained on after the loop's day is read and verified: an
    # edit to it stops the next day.
    append_one(database, run_id)
    with database.write() as session:
        session.execute(
            text("UPDATE entries SET body = 'edited' WHERE seq = :seq"), {"seq": head[0] + 1}
        )
    with pytest.raises(RecordBroken, match=f"seq {head[0] + 1}"):
        loop.step(run_id)


def test_db_check_and_backup_verify_keyed_runs_with_the_key(
    cli_factory, keyed_db, spec, sqlite_url, tmp_path
):
    run_id = make_run(keyed_db, spec)
    fill(keyed_db, run_id, days=2)
    keyed = cli_factory(sqlite_url, chain_key=KEY.decode())
    checked = keyed("db", "check")
    assert checked.exit_code == 0, checked.output
    assert "not verified" not in checked.stderr
    plain = cli_factory(sqlite_url)
    unkeyed = plain("db", "check")
    assert unkeyed.exit_code == 0, unkeyed.output
    assert "1 keyed run not verified" in unkeyed.stderr
    assert "set LOOPSIM_CHAIN_KEY" in unkeyed.stderr
    # A backup without the key is still a faithful copy: it is not refused.
    backed = plain("db", "backup", str(tmp_path / "copy.db"))
    assert backed.exit_code == 0, backed.output
    with sqlite3.connect(sqlite_url) as conn:
        conn.execute(f"UPDATE entries SET body = 'x' WHERE run_id = '{run_id}' AND seq = 2")
    broken = keyed("db", "check")
    assert broken.exit_code == 1
    assert "keyed hash" in broken.stdout
