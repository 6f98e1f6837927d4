"""Every rollup equals the same sums computed from `usage` directly, however made."""

from __future__ import annotations

import itertools
import json
import math
import sqlite3
from pathlib import Path

from sqlite_utils import Database

from llm_monitor.store import rollups
from llm_monitor.store.database import migrations, open_db
from llm_monitor.store.recorder import Recorder
from tests.conftest import invoke, new_org, usage_record

KEYS = {
    "usage_hourly": ("hour", "org_id", "token_id", "provider", "model"),
    "usage_hourly_users": ("hour", "org_id", "user"),
    "usage_daily": ("day", "org_id", "provider", "model"),
    "usage_daily_labels": ("day", "org_id", "kind", "label"),
    "usage_daily_no_price": ("day", "org_id", "provider", "model"),
}
COMPARED = ("requests", "errors", "streamed", "unpriced", "input_tokens", "output_tokens")


def expected_keys(table: str, row: dict) -> list[tuple]:
    """Which rollup rows a usage row belongs to, worked out here from the spec."""
    model = row["response_model"] or row["model"] or ""
    if table == "usage_hourly":
        return [(row["ts"][:13], row["org_id"], row["token_id"], row["provider"], model)]
    if table == "usage_hourly_users":
        return [(row["ts"][:13], row["org_id"], row["user"])] if row["user"] is not None else []
    if table == "usage_daily":
        return [(row["ts"][:10], row["org_id"], row["provider"], model)]
    if table == "usage_daily_no_price":
        if row["unpriced_reason"] != "no_price":
            return []
        return [(row["ts"][:10], row["org_id"], row["provider"], model)]
    day = row["ts"][:10]
    tags = [f"{k}={v}" for k, v in json.loads(row["tags"] or "{}").items()] or [""]
    return [
        (day, row["org_id"], "user", row["user"] or ""),
        (day, row["org_id"], "token", str(row["token_id"] or 0)),
        *((day, row["org_id"], "tag", tag) for tag in tags),
    ]


def direct(db_path: Path, table: str) -> dict[tuple, tuple]:
    """The rollup computed straight from `usage`, in Python."""
    sums: dict[tuple, list] = {}
    with sqlite3.connect(db_path) as conn:
        conn.row_factory = sqlite3.Row
        for row in map(dict, conn.execute("select * from usage")):
            values = [
                1,
                int(row["outcome"] != "ok"),
                row["streamed"],
                int(row["priced"] == 0),
                row["input_tokens"] or 0,
                row["output_tokens"] or 0,
                row["cost_usd"] or 0,
                row["latency_ms"] or 0,
                int(row["ttft_ms"] is not None),
            ]
            for key in expected_keys(table, row):
                sums[key] = [a + b for a, b in zip(sums.get(key, [0] * 9), values, strict=True)]
    return {k: (*v[:6], round(v[6], 9), round(v[7], 6), v[8]) for k, v in sums.items()}


def rolled(db_path: Path, table: str) -> dict[tuple, tuple]:
    key = KEYS[table]
    rows = query(
        db_path,
        f"select {', '.join(key + COMPARED)}, cost_usd, latency_ms_sum, ttft_count from {table}",
    )
    # Rounded here as `direct` rounds: SQLite's round() can land a last bit away.
    return {
        row[: len(key)]: (*row[len(key) : -3], round(row[-3], 9), round(row[-2], 6), row[-1])
        for row in rows
    }


def assert_rollups_match(db_path: Path) -> None:
    for table in KEYS:
        assert rolled(db_path, table) == direct(db_path, table), table


def varied_records(count: int) -> list:
    models = itertools.cycle(["gpt-4o", "gpt-4o-mini", "mystery-model", "o3-mini"])
    records = []
    for i in range(count):
        records.append(
            usage_record(
                ts=f"2026-11-{20 + i % 3:02d}T{i % 24:02d}:{i % 60:02d}:00.000Z",
                org_id=1 + i % 2,
                token_id=1 + i % 2,
                model=next(models),
                response_model=None if i % 5 else "gpt-4o-2024-08-06",
                input_tokens=None if i % 7 == 0 else 100 + i,
                output_tokens=None if i % 7 == 0 else i,
                cached_input_tokens=0,
                outcome="ok" if i % 9 else "provider_error",
                status=200 if i % 9 else 400,
                streamed=i % 4 == 0,
                latency_ms=10.0 + i,
                ttft_ms=5.0 + i if i % 4 == 0 else None,
                user=[None, "alice", "bob"][i % 5 % 3],
                tags=[None, '{"env":"prod"}', '{"env":"dev","feature":"search"}'][i % 3 - 1],
            )
        )
    return records


def two_orgs(db_path: Path) -> None:
    new_org(db_path, "Acme")
    new_org(db_path, "Globex")


def query(db_path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db_path) as conn:
        return conn.execute(sql).fetchall()


def test_recorder_keeps_the_rollup_equal_to_the_rows(fresh_db: Path) -> None:
    two_orgs(fresh_db)
    recorder = Recorder(fresh_db, batch_size=37)
    recorder.start()
    for record in varied_records(500):
        recorder.submit(record)
    recorder.close()
    assert len(direct(fresh_db, "usage_hourly")) > 40  # many hours, orgs, tokens and models
    assert len(direct(fresh_db, "usage_daily_labels")) > 10  # users, tags, none of either
    assert_rollups_match(fresh_db)
    before = {table: rolled(fresh_db, table) for table in KEYS}
    db = open_db(fresh_db)
    with db.atomic():
        rollups.rebuild(db)
    assert {table: rolled(fresh_db, table) for table in KEYS} == before  # the two agree


def test_reprice_updates_the_rollup(fresh_db: Path) -> None:
    two_orgs(fresh_db)
    recorder = Recorder(fresh_db)
    recorder.start()
    for record in varied_records(200):
        recorder.submit(record)
    recorder.close()
    unpriced_cost = query(
        fresh_db, "select sum(cost_usd) from usage_hourly where model = 'mystery-model'"
    )
    assert unpriced_cost == [(0.0,)]
    invoke(
        fresh_db,
        "pricing",
        "set",
        "mystery-model",
        "--input",
        "1",
        "--output",
        "2",
        "--effective-from",
        "2026-01-01",
    )
    invoke(fresh_db, "pricing", "reprice", "--since", "2026-11-21")
    assert_rollups_match(fresh_db)
    assert (
        query(
            fresh_db,
            "select count(*) from usage_hourly where model = 'mystery-model' "
            "and hour >= '2026-11-21' and cost_usd > 0",
        )[0][0]
        > 0
    )


def test_migration_backfills_the_rollup(tmp_path: Path) -> None:
    db_path = tmp_path / "old.db"
    db = Database(sqlite3.connect(db_path))
    migrations.apply(db, stop_before="m003_usage_hourly")  # a database from before rollups
    assert not db["usage_hourly"].exists()
    columns = [c.name for c in db["usage"].columns]
    db["usage"].insert_all(
        [{k: v for k, v in r.model_dump().items() if k in columns} for r in varied_records(120)]
    )
    db.conn.commit()
    db.conn.close()
    open_db(db_path).conn.close()  # what the proxy and the CLI do on start: upgrade
    assert_rollups_match(db_path)


def test_latency_histogram_counts_every_latency_in_its_bucket(fresh_db: Path) -> None:
    two_orgs(fresh_db)
    recorder = Recorder(fresh_db, batch_size=41)
    recorder.start()
    for record in varied_records(300):
        recorder.submit(record)
    recorder.submit(usage_record(ts="2026-11-20T05:00:00.000Z", latency_ms=None))
    recorder.close()
    expected: dict[tuple, int] = {}
    for ts, org_id, latency in query(fresh_db, "select ts, org_id, latency_ms from usage"):
        if latency is not None:
            bucket = 2 ** ((math.floor(8 * math.log2(latency)) + 1) / 8)
            key = (ts[:13], org_id, round(bucket, 3))
            expected[key] = expected.get(key, 0) + 1
    histogram = "select hour, org_id, le_ms, requests from usage_latency_hourly"
    assert {row[:3]: row[3] for row in query(fresh_db, histogram)} == expected
    db = open_db(fresh_db)
    with db.atomic():
        rollups.rebuild(db, "2026-11-21")
    assert {row[:3]: row[3] for row in query(fresh_db, histogram)} == expected
    assert rollups.latency_le(100.0) == 107.635 and rollups.latency_le(107.64) == 117.377


def bucket_in_sql(conn: sqlite3.Connection, latency_ms: float) -> float:
    sql = f"select {rollups._LATENCY_LE_SQL} from (select ? as latency_ms)"
    return conn.execute(sql, [latency_ms]).fetchone()[0]


def test_latency_bucket_in_sql_is_its_python_twin_at_every_bound() -> None:
    """SQLite makes the bucket (no Python call per row); `latency_le` must agree with it
    on either side of every bound from the floor to the cap, exact halves (0.0625)
    included, and for every latency as recorded (whole µs) up to 20 ms. (Exactly on a
    bound, SQLite's log2 and Python's may differ in the last bit.)"""
    db = Database(memory=True)
    rollups.use_math_functions(db)
    for bucket in range(-80, 240):  # 1 µs .. 1e9 ms, eight to a doubling
        bound = 2 ** ((bucket + 1) / 8)
        for latency in (bound * 0.999999, bound * 1.000001):
            assert bucket_in_sql(db.conn, latency) == rollups.latency_le(latency), latency
    for micros in range(1, 20_000):
        latency = round(micros / 1000, 3)
        assert bucket_in_sql(db.conn, latency) == rollups.latency_le(latency), latency
    assert bucket_in_sql(db.conn, 0.0) == rollups.latency_le(0.0) == 0.001
    assert bucket_in_sql(db.conn, 1e15) == rollups.latency_le(1e15)


class WithoutMath(sqlite3.Connection):
    """A connection as an SQLite built without its math functions answers their probe."""

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql.startswith("select log2(2)") and not getattr(self, "defined", False):
            raise sqlite3.OperationalError("no such function: log2")
        return super().execute(sql, *args)

    def create_function(self, name: str, *args: object, **kwargs: object) -> None:
        self.defined = True
        super().create_function(name, *args, **kwargs)


def test_latency_bucket_without_sqlite_math_functions() -> None:
    """Where SQLite was built without log2/floor/pow, Python's stand in, with the same
    buckets (a function defined on the connection overrides a built-in one alike)."""
    with_builtins = Database(memory=True)
    without = Database(sqlite3.connect(":memory:", factory=WithoutMath))
    rollups.use_math_functions(with_builtins)
    rollups.use_math_functions(without)
    assert without.conn.defined
    for latency in (0.05, 0.0625, 1.0, 107.64, 3_600_000.0):
        assert bucket_in_sql(without.conn, latency) == bucket_in_sql(with_builtins.conn, latency)
