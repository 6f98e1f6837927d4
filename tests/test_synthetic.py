"""The synthetic usage generator: exact counts, repeatable, rows the proxy could have written."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlite_utils import Database

from llm_monitor.demo.synthetic import CATALOGUE, GenerationReport, generate
from llm_monitor.money.costs import PriceBook, load_price_book
from llm_monitor.money.library import library_index, library_prices
from llm_monitor.money.prices import shipped_prices
from llm_monitor.proxy.addon import parse_tags
from llm_monitor.proxy.providers import anthropic, gemini, openai
from llm_monitor.store.database import open_db
from llm_monitor.store.recorder import price_row
from llm_monitor.usage import UsageRecord

END = dt.datetime(2026, 6, 15, 12, 0, 30, tzinfo=dt.UTC)
ROWS, ORGS, DAYS = 20_000, 5, 10
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "generate_usage_db.py"
NORMALISE = {
    "openai": openai.normalise_usage,
    "xai": openai.normalise_usage,
    "anthropic": anthropic.normalise_usage,
    "gemini": gemini.normalise_usage,
}
TOKEN_COLUMNS = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
)


def iso(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Database, GenerationReport]:
    db = open_db(tmp_path_factory.mktemp("synthetic") / "usage.db")
    report = generate(db, orgs=ORGS, days=DAYS, rows=ROWS, seed=7, end=END)
    return db, report


@pytest.fixture(scope="module")
def usage(generated: tuple[Database, GenerationReport]) -> list[dict[str, Any]]:
    return list(generated[0].query("select * from usage order by id"))


def share(rows: list[dict[str, Any]], test: Any) -> float:
    return sum(1 for row in rows if test(row)) / len(rows)


def test_counts_orgs_and_window(generated: tuple[Database, GenerationReport], usage: list) -> None:
    db, report = generated
    assert len(usage) == ROWS == report.rows
    assert [r["name"] for r in db.query("select name from orgs order by id")] == [
        f"org-{i:02d}" for i in range(1, ORGS + 1)
    ]
    assert {row["org_id"] for row in usage} == {r["id"] for r in db.query("select id from orgs")}
    assert report.tokens == db["monitor_tokens"].count
    assert all(
        1 <= n <= 5 for (n,) in db.execute("select count(*) from monitor_tokens group by org_id")
    )
    first, last = usage[0]["ts"], usage[-1]["ts"]
    assert (first, last) == (report.first_ts, report.last_ts)
    assert iso(END - dt.timedelta(days=DAYS)) <= first <= last <= iso(END)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["ts"]) for r in usage)
    assert [r["ts"] for r in usage] == sorted(r["ts"] for r in usage)  # inserted in ts order
    tokens = {(r["id"], r["org_id"]) for r in db.query("select id, org_id from monitor_tokens")}
    assert {(r["token_id"], r["org_id"]) for r in usage} <= tokens
    assert all(
        r["last_used_at"] == max(u["ts"] for u in usage if u["token_id"] == r["id"])
        for r in db.query("select * from monitor_tokens where last_used_at is not null")
    )


def test_plausible_shares(usage: list[dict[str, Any]]) -> None:
    assert 0.2 <= share(usage, lambda r: r["streamed"]) <= 0.5
    assert 0.015 <= share(usage, lambda r: r["outcome"] != "ok") <= 0.05
    assert 0.004 <= share(usage, lambda r: r["priced"] == 0) <= 0.025
    assert 0.1 <= share(usage, lambda r: r["cached_input_tokens"]) <= 0.5
    assert 0.1 <= share(usage, lambda r: r["reasoning_tokens"]) <= 0.6
    assert {r["provider"] for r in usage} == {"openai", "anthropic", "gemini", "xai"}
    assert {r["status"] for r in usage} == {200, 400, 408, 429, 500, None}
    assert {r["outcome"] for r in usage} == {
        "ok",
        "provider_error",
        "upstream_error",
        "client_disconnected",
    }
    latencies = sorted(r["latency_ms"] for r in usage)
    assert 100 < latencies[len(latencies) // 2] < 10_000 < latencies[-len(latencies) // 100]
    assert all(r["ttft_ms"] is not None for r in usage if r["streamed"])
    assert all(r["ttft_ms"] <= r["latency_ms"] for r in usage if r["streamed"])
    assert 0 < share(usage, lambda r: r["user"] is None) < 1
    assert 0 < share(usage, lambda r: r["tags"] is None) < 1


def test_priced_exactly_as_the_recorder_prices(
    generated: tuple[Database, GenerationReport], usage: list
) -> None:
    book = load_price_book(generated[0])
    # The defaults were loaded into the empty prices table.
    assert len(book) == len(library_prices()) + len(shipped_prices())
    fields = set(UsageRecord.model_fields)
    pricing = ("cost_usd", "priced", "cost_basis", "unpriced_reason")
    for row in usage:
        priced = price_row(UsageRecord.model_validate({k: row[k] for k in fields}), book)
        assert tuple(priced[c] for c in pricing) == tuple(row[c] for c in pricing), row
        if row["priced"] == 0:
            assert row["cost_usd"] is None  # unknown, never $0
        if (row["status"] or 0) >= 400 or row["outcome"] == "upstream_error":
            assert row["priced"] is None
            assert all(row[c] is None for c in TOKEN_COLUMNS)
    unpriced = {r["model"] for r in usage if r["priced"] == 0 and r["input_tokens"]}
    assert unpriced and all(m.startswith("ft:") for m in unpriced)


def test_columns_are_what_the_providers_usage_gives(usage: list[dict[str, Any]]) -> None:
    for row in usage:
        if row["raw_usage"] is None:
            continue
        tokens = NORMALISE[row["provider"]](json.loads(row["raw_usage"]))
        assert tuple(getattr(tokens, c) for c in TOKEN_COLUMNS) == tuple(
            row[c] for c in TOKEN_COLUMNS
        ), row


def test_paths_tags_and_users_as_the_proxy_stores_them(usage: list[dict[str, Any]]) -> None:
    for row in usage:
        if row["tags"] is not None:
            pairs = ",".join(f"{k}={v}" for k, v in json.loads(row["tags"]).items())
            assert parse_tags(pairs) == row["tags"]
        if row["provider"] == "gemini":
            # An error answer is never read as a stream, even to a streaming request.
            stream = row["streamed"] or (row["outcome"] != "ok" and "stream" in row["path"])
            action = "streamGenerateContent?alt=sse" if stream else "generateContent"
            assert row["path"] == f"/v1beta/models/{row['model']}:{action}"
        elif row["provider"] == "anthropic":
            assert row["path"] in ("/v1/messages", "/v1/messages?beta=true")
        else:
            assert row["path"] in ("/v1/chat/completions", "/v1/responses", "/v1/embeddings")
        assert row["user"] is None or row["user"].endswith(".example")


def test_hourly_rollup_equals_direct_sums(generated: tuple[Database, GenerationReport]) -> None:
    db = generated[0]
    sums = "sum({}), sum(coalesce(input_tokens, 0)), sum(coalesce(output_tokens, 0)), {}"
    rolled = db.execute(
        f"select org_id, {sums.format('requests', 'round(sum(cost_usd), 6)')} "
        "from usage_hourly group by org_id order by org_id"
    ).fetchall()
    direct = db.execute(
        f"select org_id, {sums.format('1', 'round(sum(coalesce(cost_usd, 0)), 6)')} "
        "from usage group by org_id order by org_id"
    ).fetchall()
    assert rolled == direct
    assert sum(r[1] for r in rolled) == ROWS


def test_catalogue_models_are_priced_by_the_default_prices() -> None:
    book = PriceBook([*library_prices(), *shipped_prices()], library_index())
    for model in CATALOGUE:
        assert book.lookup(model.provider, model.answered_as, END.date()), model.name


def test_same_seed_same_rows(tmp_path: Path) -> None:
    def rows(name: str, seed: int) -> list[tuple]:
        db = open_db(tmp_path / name)
        generate(db, orgs=3, days=3, rows=3000, seed=seed, end=END)
        return db.execute("select * from usage order by id").fetchall()

    first = rows("a.db", seed=1)
    assert rows("b.db", seed=1) == first
    assert rows("c.db", seed=2) != first


def test_org_ids_backfills_existing_orgs_only(tmp_path: Path) -> None:
    db = open_db(tmp_path / "demo.db")
    generate(db, orgs=3, days=2, rows=100, end=END)
    orgs_before = db.execute("select * from orgs").fetchall()
    tokens_before = db.execute("select id, org_id, token_hash from monitor_tokens").fetchall()
    report = generate(db, days=5, rows=2000, seed=3, end=END, org_ids=[1, 3])
    assert db.execute("select * from orgs").fetchall() == orgs_before
    assert db.execute("select id, org_id, token_hash from monitor_tokens").fetchall() == (
        tokens_before
    )
    assert (report.orgs, report.rows) == (2, 2000)
    added = db.execute("select org_id, count(*) from usage where id > 100 group by 1").fetchall()
    assert [org for org, _ in added] == [1, 3] and sum(n for _, n in added) == 2000
    with pytest.raises(ValueError, match="already exists"):
        generate(db, orgs=3, rows=10, end=END)
    with pytest.raises(ValueError, match="no organisation"):
        generate(db, rows=10, end=END, org_ids=[99])


def load_script() -> Any:
    spec = importlib.util.spec_from_file_location("generate_usage_db", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_script_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    main = load_script()
    path = tmp_path / "usage.db"
    path.write_text("precious")
    args = [str(path), "--rows", "300", "--orgs", "2", "--days", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {path} already exists (pass --force to replace it)"
    assert path.read_text() == "precious"

    result = CliRunner().invoke(main, [*args, "--force"])
    assert result.exit_code == 0, result.output
    assert "300 usage rows" in result.output
    with sqlite3.connect(path) as conn:
        assert conn.execute("select count(*) from usage").fetchone() == (300,)
