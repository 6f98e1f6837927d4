"""The recorder alone, on real SQLite files: batches, atomicity, bad rows, spooling."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from llm_monitor.store.database import open_db
from llm_monitor.store.recorder import Recorder, spool_path_for, write_rows
from llm_monitor.usage import UsageRecord
from tests.conftest import invoke, new_org, usage_record


def record(**kw: object) -> UsageRecord:
    return usage_record(**{"model": "gpt-4o", "input_tokens": 10, "output_tokens": 1, **kw})


@pytest.fixture
def db_with_token(fresh_db: Path) -> Path:
    new_org(fresh_db, "Acme")
    return fresh_db


def count(db_path: Path) -> int:
    with sqlite3.connect(db_path) as conn:
        return conn.execute("select count(*) from usage").fetchone()[0]


def test_rows_and_last_used_are_one_transaction(db_with_token: Path) -> None:
    """If the token update fails, no row stays behind to be inserted twice on retry."""
    db = open_db(db_with_token)
    db.execute(
        "create trigger no_update before update on monitor_tokens "
        "begin select raise(abort, 'simulated lock'); end"
    )
    row = {**record().model_dump(), "cost_usd": None, "priced": None}
    with pytest.raises(sqlite3.IntegrityError):
        write_rows(db, [row])
    assert count(db_with_token) == 0
    db.execute("drop trigger no_update")
    write_rows(db, [row])
    assert count(db_with_token) == 1
    [(last_used,)] = db.execute("select last_used_at from monitor_tokens").fetchall()
    assert last_used == row["ts"]


def test_recorder_writes_everything_on_close(db_with_token: Path) -> None:
    recorder = Recorder(db_with_token, batch_size=7)
    recorder.start()
    for i in range(100):
        recorder.submit(record(input_tokens=i))
    recorder.close()
    assert count(db_with_token) == 100
    with sqlite3.connect(db_with_token) as conn:
        assert conn.execute(
            "select sum(input_tokens), count(distinct cost_usd) from usage"
        ).fetchone() == (sum(range(100)), 100)


def test_a_row_sqlite_cannot_take_is_spooled_and_the_rest_written(db_with_token: Path) -> None:
    recorder = Recorder(db_with_token)
    recorder.start()
    recorder.submit(record(input_tokens=1))
    recorder.submit(record(input_tokens=10**20, output_tokens=None))  # beyond SQLite's INTEGER
    recorder.submit(record(input_tokens=3))
    recorder.close()
    with sqlite3.connect(db_with_token) as conn:
        written = [r[0] for r in conn.execute("select input_tokens from usage order by id")]
    assert written == [1, 3]
    spooled = spool_path_for(db_with_token).read_text().splitlines()
    assert [json.loads(line)["input_tokens"] for line in spooled] == [10**20]


def test_unwritable_database_at_shutdown_spools_and_import_spool_loads(
    db_with_token: Path,
) -> None:
    locker = sqlite3.connect(db_with_token, isolation_level=None)
    locker.execute("begin exclusive")
    recorder = Recorder(db_with_token)
    recorder.start()
    for i in range(5):
        recorder.submit(record(input_tokens=100 + i))
    recorder.close(timeout=0.5)
    locker.execute("rollback")
    locker.close()
    spool = spool_path_for(db_with_token)
    assert len(spool.read_text().splitlines()) == 5
    assert count(db_with_token) == 0

    assert "imported 5 rows" in invoke(db_with_token, "import-spool", str(spool))
    assert count(db_with_token) == 5
    assert not spool.exists()
    with sqlite3.connect(db_with_token) as conn:  # priced on import, like any other row
        assert conn.execute("select count(*) from usage where priced = 1").fetchone() == (5,)


def test_a_long_outage_spills_to_the_spool_instead_of_growing(db_with_token: Path) -> None:
    locker = sqlite3.connect(db_with_token, isolation_level=None)
    locker.execute("begin exclusive")
    recorder = Recorder(db_with_token, max_pending=10, max_delay=0.01)
    recorder.start()
    for i in range(25):
        recorder.submit(record(input_tokens=i))
        time.sleep(0.01)
    time.sleep(0.5)
    spool = spool_path_for(db_with_token)
    spilled = len(spool.read_text().splitlines())
    assert spilled >= 10  # spilled while the outage went on, not only at shutdown
    locker.execute("rollback")
    locker.close()
    recorder.close()
    spilled = len(spool.read_text().splitlines())
    assert count(db_with_token) + spilled == 25  # every row in one place or the other


def test_only_unpriced_rows_are_indexed_by_their_pricing(db_with_token: Path) -> None:
    """A priced row (almost every row) pays for no index on `priced`; unpriced ones are
    still found through an index of their own."""
    db = open_db(db_with_token)
    write_rows(db, [{**record().model_dump(), "cost_usd": 0.01, "priced": 1}])
    write_rows(db, [{**record(model="made-up").model_dump(), "cost_usd": None, "priced": 0}])
    indexes = {
        name: sql
        for name, sql in db.execute(
            "select name, sql from sqlite_master where type = 'index' and tbl_name = 'usage'"
        )
    }
    assert "idx_usage_priced" not in indexes
    assert indexes["idx_usage_unpriced"].endswith("where priced = 0")
    [(entries,)] = db.execute(
        "select count(*) from usage indexed by idx_usage_unpriced where priced = 0"
    ).fetchall()
    assert entries == 1
    plan = " ".join(
        str(row[-1])
        for row in db.execute(
            "explain query plan select id from usage where priced = 0 and ts >= '2000' order by ts"
        )
    )
    assert "idx_usage_unpriced" in plan


def test_the_recorder_sees_a_schema_change_made_while_it_runs(db_with_token: Path) -> None:
    """Which columns an INSERT may leave out is read once, and again when the schema
    changes: a column given a default meanwhile is written as NULL, not left to it."""
    recorder = Recorder(db_with_token, max_delay=0.01)
    recorder.start()
    try:
        recorder.submit(record())
        deadline = time.monotonic() + 10
        while recorder.written < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert recorder.written == 1
        open_db(db_with_token, migrate=False)["usage"].transform(defaults={"service_tier": "flex"})
        recorder.submit(record())
    finally:
        recorder.close()
    with sqlite3.connect(db_with_token) as conn:
        tiers = [tier for (tier,) in conn.execute("select service_tier from usage order by id")]
    assert tiers == [None, None]


def test_a_row_nothing_can_write_is_logged_and_the_thread_goes_on(
    db_with_token: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Only a bug could submit it (the proxy's rows are its own typed values): it is lost
    loudly, and the rows after it are still written."""
    recorder = Recorder(db_with_token)
    recorder.start()
    recorder.submit({"not": {"a", "row"}})  # type: ignore[arg-type]
    recorder.submit(record(input_tokens=7))
    recorder.close()
    with sqlite3.connect(db_with_token) as conn:
        assert [r[0] for r in conn.execute("select input_tokens from usage")] == [7]
    assert "a usage row LOST: dict cannot be written anywhere" in caplog.text


def test_the_recorder_says_when_its_start_up_is_done_even_when_it_failed(
    db_with_token: Path, tmp_path: Path
) -> None:
    """The proxy freezes its heap once the recorder has built its price book; a database
    that cannot be opened must not leave it waiting."""
    for path in (db_with_token, tmp_path):  # a directory is no database
        recorder = Recorder(path)
        assert not recorder.warmed.is_set()
        recorder.start()
        try:
            assert recorder.warmed.wait(5)
        finally:
            recorder.close(timeout=1)
