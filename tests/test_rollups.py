"""The hourly rollup equals the same sums computed from `usage` directly, however made."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

from sqlite_utils import Database

from llm_monitor import rollups
from llm_monitor.database import migrations, open_db
from llm_monitor.recorder import Recorder
from tests.conftest import invoke, new_org, usage_record

DIRECT = """
select substr(ts, 1, 13), org_id, token_id, provider, coalesce(response_model, model, ''),
  count(*), sum(outcome != 'ok'), sum(streamed), sum(priced = 0),
  sum(coalesce(input_tokens, 0)), sum(coalesce(output_tokens, 0)),
  round(sum(coalesce(cost_usd, 0)), 9), round(avg(latency_ms), 6), count(ttft_ms)
from usage group by 1, 2, 3, 4, 5 order by 1, 2, 3, 4, 5
"""
ROLLED = """
select hour, org_id, token_id, provider, model, requests, errors, streamed, unpriced,
  input_tokens, output_tokens, round(cost_usd, 9), round(latency_ms_sum / latency_count, 6),
  ttft_count
from usage_hourly order by 1, 2, 3, 4, 5
"""


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
    direct = query(fresh_db, DIRECT)
    assert len(direct) > 40  # many hours, orgs, tokens and models
    assert query(fresh_db, ROLLED) == direct
    before = query(fresh_db, ROLLED)
    db = open_db(fresh_db)
    with db.atomic():
        rollups.rebuild(db)
    assert query(fresh_db, ROLLED) == before  # incremental and rebuilt agree


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
    assert query(fresh_db, ROLLED) == query(fresh_db, DIRECT)
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
    assert query(db_path, ROLLED) == query(db_path, DIRECT)
