"""The providers' own figures: the real importers against a stand-in of each provider's admin
API (tests/billing_standin.py), console exports with their real header layouts, and an
import killed halfway. Reconciliation with real proxied traffic is in
test_reconciliation.py."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from llm_monitor.billing import ledger
from llm_monitor.cli import cli
from tests.billing_standin import BillingStandIn

EXPORTS = Path(__file__).parent / "billing_exports"
ADMIN_KEYS = {
    "openai": "sk-admin-NEVER-STORE-openai-5a1e9c",
    "anthropic": "sk-ant-admin01-NEVER-STORE-anthropic-77d2",
    "xai": "xai-mgmt-NEVER-STORE-xai-0c4b",
}
ENV = {
    "OPENAI_ADMIN_KEY": ADMIN_KEYS["openai"],
    "ANTHROPIC_ADMIN_KEY": ADMIN_KEYS["anthropic"],
    "XAI_MANAGEMENT_KEY": ADMIN_KEYS["xai"],
}
TODAY = ledger.utc_today()


def day(offset: int) -> dt.date:
    return TODAY - dt.timedelta(days=offset)


def run(db_path: Path, *args: str, env: dict[str, str | None] | None = None) -> Result:
    """The real CLI in-process (admin keys in its environment unless `env` says otherwise:
    None unsets a variable); the caller checks the result."""
    env = {**dict.fromkeys(ENV), **(ENV if env is None else env)}
    return CliRunner().invoke(cli, ["--db", str(db_path), *args], env=env)


def ok(db_path: Path, *args: str, env: dict[str, str | None] | None = None) -> Result:
    result = run(db_path, *args, env=env)
    assert result.exit_code == 0, result.output
    return result


def query(db_path: Path, sql: str, params: tuple = ()) -> list[dict]:
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


def assert_no_key_leaked(db_path: Path, *outputs: str) -> None:
    """No admin key in the database file (WAL included) nor in anything printed."""
    files = [p for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)]
    for key in ADMIN_KEYS.values():
        for file in files:
            assert key.encode() not in file.read_bytes(), file
        for output in outputs:
            assert key not in output


@pytest.fixture
def standin() -> Iterator[BillingStandIn]:
    with BillingStandIn(ADMIN_KEYS) as server:
        yield server


def fill_openai(standin: BillingStandIn) -> None:
    f = standin.figures
    f.openai_projects = {
        "proj_a": [
            {"id": "key_a", "name": "search", "redacted_value": "sk-proj-...1111"},
            {"id": "key_b", "name": "batch", "redacted_value": "sk-...2222"},
        ]
    }
    f.openai_usage["completions"] = {
        day(10): [
            {
                "model": "gpt-4o-mini-2024-07-18",
                "api_key_id": "key_a",
                "project_id": "proj_a",
                "input_tokens": 2000,
                "input_cached_tokens": 500,
                "output_tokens": 400,
                "input_audio_tokens": 0,
                "output_audio_tokens": 0,
                "num_model_requests": 2,
            }
        ],
        # day(9): no entry, an empty bucket ("results": [])
        day(3): [
            {
                "model": "gpt-4o-2024-08-06",
                "api_key_id": "key_b",
                "project_id": "proj_a",
                "input_tokens": 100,
                "input_cached_tokens": 0,
                "output_tokens": 10,
                "num_model_requests": 1,
            }
        ],
    }
    f.openai_usage["embeddings"] = {
        day(10): [
            {
                "model": "text-embedding-3-small",
                "api_key_id": "key_a",
                "project_id": "proj_a",
                "input_tokens": 50,
                "num_model_requests": 5,
            }
        ]
    }
    f.openai_costs = {
        day(10): [
            # A string, as the Costs API sometimes sends; a JSON number must stay exact too.
            {
                "amount": {"value": "0.0002625", "currency": "usd"},
                "line_item": "gpt-4o-mini-2024-07-18, input",
                "project_id": "proj_a",
                "api_key_id": "key_a",
            },
            {
                "amount": {"value": 0.1, "currency": "usd"},
                "line_item": "gpt-4o-mini-2024-07-18, output",
                "project_id": "proj_a",
                "api_key_id": "key_a",
            },
        ],
        day(3): [
            {
                "amount": {"value": 0.00035, "currency": "usd"},
                "line_item": "gpt-4o-2024-08-06, input",
                "project_id": "proj_a",
                "api_key_id": "key_b",
            }
        ],
    }


def test_openai_import(fresh_db: Path, standin: BillingStandIn) -> None:
    fill_openai(standin)
    standin.rate_limit_once.add("/v1/organization/costs")
    since = day(12).isoformat()
    result = ok(
        fresh_db, "billing", "import", "openai", "--since", since, "--base-url", standin.url
    )
    out = result.output
    assert f"openai:usage/completions: {since} to {TODAY}: 13 days, 2 usage rows" in out
    assert "openai:usage/web_search_calls: skipped" in out  # where present
    assert "openai:costs:" in out and "3 cost rows" in out
    assert "openai: importing days" in result.stderr  # the progress bar

    usage = query(fresh_db, "select * from provider_usage order by day, kind")
    completions = [u for u in usage if u["kind"] == "completions"]
    assert [(u["day"], u["model"], u["model_raw"]) for u in completions] == [
        (day(10).isoformat(), "gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
        (day(3).isoformat(), "gpt-4o", "gpt-4o-2024-08-06"),
    ]
    first = completions[0]
    assert (first["input_tokens"], first["cached_input_tokens"], first["output_tokens"]) == (
        2000,
        500,
        400,
    )
    assert first["requests"] == 2
    assert (first["api_key_id"], first["api_key_name"], first["key_hint"]) == (
        "key_a",
        "search",
        "sk-proj-...1111",
    )
    assert first["provisional"] == 0 and completions[1]["provisional"] == 1
    embeddings = [u for u in usage if u["kind"] == "embeddings"]  # answered as `result`
    assert [(e["model"], e["input_tokens"]) for e in embeddings] == [("text-embedding-3-small", 50)]
    costs = query(fresh_db, "select * from provider_costs order by day, line_item")
    assert [c["amount_usd"] for c in costs] == ["0.0002625", "0.1", "0.00035"]
    assert costs[0]["token_type"] == "input" and costs[0]["model"] == "gpt-4o-mini"
    assert query(fresh_db, "select count(*) as n from billing_keys")[0]["n"] == 2

    # The 429 was retried after its Retry-After (1 s), not before.
    costs_calls = [s for s in standin.seen if s.path == "/v1/organization/costs"]
    assert costs_calls[1].at - costs_calls[0].at >= 0.9
    # Every request: aligned to UTC midnight, 1d buckets, the admin key as a bearer.
    assert all(int(s.query["start_time"][0]) % 86400 == 0 for s in costs_calls)

    # Run again: every bucket replaced, none doubled.
    again = ok(fresh_db, "billing", "import", "openai", "--since", since, "--base-url", standin.url)
    assert query(fresh_db, "select count(*) as n from provider_usage")[0]["n"] == len(usage)
    assert query(fresh_db, "select count(*) as n from provider_costs")[0]["n"] == len(costs)
    assert_no_key_leaked(fresh_db, out, result.stderr, again.output)


def test_a_refused_admin_key_is_one_clear_line(fresh_db: Path, standin: BillingStandIn) -> None:
    env = {**ENV, "OPENAI_ADMIN_KEY": "sk-admin-wrong-key-000000"}
    result = run(fresh_db, "billing", "import", "openai", "--base-url", standin.url, env=env)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "answered 401" in result.output and "admin key" in result.output
    assert "sk-admin-wrong-key-000000" not in result.output
    future = (TODAY + dt.timedelta(days=1)).isoformat()
    late = run(
        fresh_db, "billing", "import", "openai", "--since", future, "--base-url", standin.url
    )
    assert late.exit_code != 0 and "is in the future" in late.output
    no_key = run(fresh_db, "billing", "import", "openai", "--base-url", standin.url, env={})
    assert no_key.exit_code != 0 and "set OPENAI_ADMIN_KEY or give --key-file" in no_key.output


def test_key_file(fresh_db: Path, standin: BillingStandIn, tmp_path: Path) -> None:
    fill_openai(standin)
    key_file = tmp_path / "openai.key"
    key_file.write_text(ADMIN_KEYS["openai"] + "\n")
    ok(
        fresh_db,
        "billing", "import", "openai", "--since", day(2).isoformat(),
        "--base-url", standin.url, "--key-file", str(key_file),
        env={},
    )  # fmt: skip
    source = query(fresh_db, "select * from billing_sources")[0]
    assert source["key_file"] == str(key_file) and source["base_url"] == standin.url
    assert_no_key_leaked(fresh_db)


def fill_anthropic(standin: BillingStandIn, days: range) -> None:
    f = standin.figures
    f.anthropic_keys = [
        {
            "id": "apikey_01A",
            "name": "search",
            "partial_key_hint": "sk-ant-api03-R2D...igAA",
            "workspace_id": "wrkspc_1",
            "status": "active",
            "type": "api_key",
        }
    ]
    for offset in days:
        f.anthropic_usage[day(offset)] = [
            {
                "api_key_id": "apikey_01A",
                "workspace_id": "wrkspc_1",
                "model": "claude-sonnet-4-5-20250929",
                "service_tier": "standard",
                "context_window": "0-200k",
                "uncached_input_tokens": 1000 + offset,
                "cache_read_input_tokens": 300,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 200,
                    "ephemeral_1h_input_tokens": 100,
                },
                "output_tokens": 50,
                "server_tool_use": {"web_search_requests": 1},
            },
            # Workbench: no key; the default workspace: null.
            {
                "api_key_id": None,
                "workspace_id": None,
                "model": "claude-haiku-4-5-20251001",
                "uncached_input_tokens": 10,
                "cache_read_input_tokens": 0,
                "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                "output_tokens": 5,
                "server_tool_use": {"web_search_requests": 0},
            },
        ]
        f.anthropic_costs[day(offset)] = [
            {
                "currency": "USD",
                "amount": "123.455",  # cents
                "workspace_id": "wrkspc_1",
                "description": "Claude Sonnet 4.5 Usage - Input Tokens",
                "cost_type": "tokens",
                "context_window": "0-200k",
                "model": "claude-sonnet-4-5-20250929",
                "service_tier": "standard",
                "token_type": "uncached_input_tokens",
            }
        ]


def test_anthropic_import(fresh_db: Path, standin: BillingStandIn) -> None:
    fill_anthropic(standin, range(4, 6))
    standin.rate_limit_once.add("/v1/organizations/usage_report/messages")
    since = day(6).isoformat()
    result = ok(
        fresh_db, "billing", "import", "anthropic", "--since", since, "--base-url", standin.url
    )
    assert "anthropic: 1 API keys" in result.output
    usage = query(
        fresh_db, "select * from provider_usage where day = ? order by model", (day(5).isoformat(),)
    )
    haiku, sonnet = usage
    assert (
        sonnet["model"] == "claude-sonnet-4-5" and sonnet["key_hint"] == "sk-ant-api03-R2D...igAA"
    )
    # input = uncached + cache reads + both cache writes, as the proxy counts it
    assert (sonnet["input_tokens"], sonnet["cached_input_tokens"]) == (1005 + 300 + 300, 300)
    assert (sonnet["cache_write_tokens"], sonnet["cache_write_1h_tokens"]) == (300, 100)
    assert sonnet["web_search_requests"] == 1 and sonnet["requests"] is None  # not reported
    assert haiku["api_key_id"] is None and haiku["project_id"] is None  # Workbench
    costs = query(fresh_db, "select amount_usd, model from provider_costs")
    assert costs == [{"amount_usd": "1.23455", "model": "claude-sonnet-4-5"}] * 2  # cents
    calls = [s for s in standin.seen if s.path.endswith("/messages")]
    assert calls[0].query["starting_at"] == [f"{since}T00:00:00Z"]
    assert_no_key_leaked(fresh_db, result.output)


def test_xai_import(fresh_db: Path, standin: BillingStandIn) -> None:
    standin.figures.xai_usage = {
        day(3): {"grok-4-0709": "1.25", "grok-3-mini": 0.5},
        day(1): {"grok-4-0709": "0.1"},
    }
    result = ok(
        fresh_db, "billing", "import", "xai", "--team", "team-123",
        "--since", day(5).isoformat(), "--base-url", standin.url,
    )  # fmt: skip
    assert "xai:usage/team-123" in result.output
    rows = query(fresh_db, "select day, model, amount_usd from provider_costs order by day, model")
    assert rows == [
        {"day": day(3).isoformat(), "model": "grok-3-mini", "amount_usd": "0.5"},
        {"day": day(3).isoformat(), "model": "grok-4", "amount_usd": "1.25"},
        {"day": day(1).isoformat(), "model": "grok-4", "amount_usd": "0.1"},
    ]
    (call,) = [s for s in standin.seen if s.method == "POST"]
    assert call.path == "/v1/billing/teams/team-123/usage"
    bad = run(fresh_db, "billing", "import", "xai", "--team", "../x", "--base-url", standin.url)
    assert bad.exit_code != 0 and "not an xAI team id" in bad.output


def test_import_killed_halfway_resumes_and_writes_every_bucket_once(
    fresh_db: Path, standin: BillingStandIn
) -> None:
    fill_anthropic(standin, range(0, 12))
    since = day(11)
    # Pages of two days: the fourth page (days 7 and 8 of 12) is held, then the import is
    # killed while it waits for it.
    standin.hold_at = ("/v1/organizations/usage_report/messages", "page_6")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "llm_monitor", "--db", str(fresh_db), "billing", "import",
            "anthropic", "--since", since.isoformat(), "--base-url", standin.url,
        ],
        env={**os.environ, **ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert standin.held.wait(60), process.communicate(timeout=5)[0]
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
        standin.release.set()
    standin.hold_at = None
    cursor = query(fresh_db, "select * from billing_cursors where feed like '%messages'")[0]
    assert cursor["done_through"] == (since + dt.timedelta(days=5)).isoformat()
    assert cursor["finished_at"] is None
    written = query(fresh_db, "select distinct day from provider_usage order by day")
    assert [r["day"] for r in written] == [
        (since + dt.timedelta(days=i)).isoformat() for i in range(6)
    ]

    before = len(standin.seen)
    result = ok(
        fresh_db,
        "billing",
        "import",
        "anthropic",
        "--since",
        since.isoformat(),
        "--base-url",
        standin.url,
    )
    assert "(resumed)" in result.output
    resumed = [s for s in standin.seen[before:] if s.path.endswith("/messages")]
    assert resumed[0].query["starting_at"] == [
        f"{(since + dt.timedelta(days=6)).isoformat()}T00:00:00Z"
    ]
    # Every bucket exactly once: two rows a day (a key and Workbench), twelve days.
    per_day = query(
        fresh_db,
        "select day, count(*) as n, sum(output_tokens) as output from provider_usage "
        "where source = 'anthropic:usage_report/messages' group by day order by day",
    )
    assert [(r["day"], r["n"], r["output"]) for r in per_day] == [
        ((since + dt.timedelta(days=i)).isoformat(), 2, 55) for i in range(12)
    ]
    assert query(fresh_db, "select finished_at from billing_cursors where feed like '%messages'")[
        0
    ]["finished_at"]


def test_sync_runs_every_remembered_source(fresh_db: Path, standin: BillingStandIn) -> None:
    fill_openai(standin)
    standin.figures.xai_usage = {day(1): {"grok-4": "2"}}
    assert "no sources yet" in ok(fresh_db, "billing", "sync").output
    ok(
        fresh_db,
        "billing",
        "import",
        "openai",
        "--since",
        day(12).isoformat(),
        "--base-url",
        standin.url,
    )
    ok(
        fresh_db,
        "billing",
        "import",
        "xai",
        "--team",
        "t1",
        "--since",
        day(3).isoformat(),
        "--base-url",
        standin.url,
    )
    standin.seen.clear()
    result = ok(fresh_db, "billing", "sync")
    assert "reconciliation of the last 30 days updated" in result.output
    # From where each got to, re-pulling the trailing window of provisional days.
    completions = [s for s in standin.seen if s.path.endswith("/usage/completions")]
    assert int(completions[0].query["start_time"][0]) == int(
        dt.datetime.combine(day(7), dt.time(), dt.UTC).timestamp()
    )
    # Without the key, a source is skipped, said so, and the exit status says it too.
    partial = run(fresh_db, "billing", "sync", env={"OPENAI_ADMIN_KEY": ADMIN_KEYS["openai"]})
    assert partial.exit_code == 1 and "xai:t1: skipped: no xai admin key" in partial.output
    assert_no_key_leaked(fresh_db, result.output, partial.output)


# Console and billing exports.


def test_anthropic_usage_export(fresh_db: Path) -> None:
    out = ok(fresh_db, "billing", "import-csv", str(EXPORTS / "anthropic_usage.csv")).output
    assert "Anthropic console usage export: 3 rows over 2 days" in out
    rows = query(fresh_db, "select * from provider_usage order by day, model")
    haiku, sonnet, long_context = rows
    assert sonnet["model"] == "claude-sonnet-4-5" and sonnet["api_key_name"] == "svc-search"
    assert (sonnet["input_tokens"], sonnet["cached_input_tokens"]) == (
        1200 + 300 + 100 + 4000,
        4000,
    )
    assert (sonnet["cache_write_tokens"], sonnet["cache_write_1h_tokens"]) == (400, 100)
    assert sonnet["web_search_requests"] == 2 and sonnet["project_id"] == "Default"
    assert json.loads(sonnet["raw"])["context_window"] == "≤ 200k"
    assert haiku["api_key_name"] is None  # Workbench
    assert long_context["kind"] == "batch" and long_context["input_tokens"] == 250000


def test_older_anthropic_usage_export_without_the_cache_split(fresh_db: Path) -> None:
    ok(fresh_db, "billing", "import-csv", str(EXPORTS / "anthropic_usage_old.csv"))
    row = query(fresh_db, "select * from provider_usage where day = '2025-03-01'")[0]
    assert row["model"] == "claude-3-5-sonnet"
    assert (row["input_tokens"], row["cache_write_tokens"], row["cache_write_1h_tokens"]) == (
        1500,
        200,
        None,  # not in older exports: unknown, not zero
    )
    assert row["web_search_requests"] is None


def test_anthropic_cost_export_names_models_by_display_name(fresh_db: Path) -> None:
    ok(fresh_db, "billing", "import-csv", str(EXPORTS / "anthropic_cost.csv"))
    rows = query(
        fresh_db, "select model, model_raw, amount_usd, token_type from provider_costs order by id"
    )
    assert rows[0] == {
        "model": "claude-sonnet-4-5",
        "model_raw": "Claude Sonnet 4.5",
        "amount_usd": "0.0036",
        "token_type": "input_no_cache",
    }
    assert rows[2]["model"] == "claude-haiku-4-5"


def test_openai_cost_export(fresh_db: Path) -> None:
    ok(fresh_db, "billing", "import-csv", str(EXPORTS / "openai_costs.csv"), "--provider", "openai")
    rows = query(
        fresh_db, "select day, model, amount_usd, line_item from provider_costs order by id"
    )
    assert rows == [
        {
            "day": "2026-11-01",
            "model": "gpt-4o",
            "amount_usd": "0.1234567891",
            "line_item": "gpt-4o-2024-08-06, input",
        },
        {
            "day": "2026-11-01",
            "model": None,
            "amount_usd": "0.02",
            "line_item": "Web search tool calls",
        },
        {
            "day": "2026-11-02",
            "model": "gpt-4o-mini",
            "amount_usd": "1.5",
            "line_item": "gpt-4o-mini, output",
        },
    ]


def test_google_billing_export(fresh_db: Path) -> None:
    out = ok(fresh_db, "billing", "import-csv", str(EXPORTS / "gcp_billing.csv")).output
    assert "1 rows of other services skipped" in out  # Compute Engine
    rows = query(
        fresh_db,
        "select provider, model, amount_usd, project_id from provider_costs order by provider",
    )
    assert rows == [
        {
            "provider": "gemini",
            "model": "gemini-2.5-flash",
            "amount_usd": "0.45",
            "project_id": "acme-prod",
        },
        # 9.20 EUR at 0.92 EUR per USD
        {
            "provider": "vertex-ai",
            "model": "gemini-2.5-pro",
            "amount_usd": "10",
            "project_id": "acme-ml",
        },
    ]
    refused = run(
        fresh_db, "billing", "import-csv", str(EXPORTS / "gcp_billing.csv"), "--provider", "openai"
    )
    assert refused.exit_code != 0 and "not openai's" in refused.output


def test_a_malformed_line_refuses_the_whole_file(fresh_db: Path, tmp_path: Path) -> None:
    result = run(fresh_db, "billing", "import-csv", str(EXPORTS / "anthropic_usage_malformed.csv"))
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "line 4: usage_input_tokens_no_cache: 'lots' is not a number" in result.output
    assert "nothing was imported" in result.output
    assert query(fresh_db, "select count(*) as n from provider_usage")[0]["n"] == 0
    short = tmp_path / "short.csv"
    short.write_text((EXPORTS / "openai_costs.csv").read_text() + "1793577600,1793664000\n")
    result = run(fresh_db, "billing", "import-csv", str(short))
    assert "line 5: expected 12 fields, found 2" in result.output
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("date,spend\n2026-11-01,3\n")
    assert "not a known export" in run(fresh_db, "billing", "import-csv", str(unknown)).output


def test_model_names_and_hints() -> None:
    assert ledger.canonical_model("anthropic", "Claude 3.5 Sonnet") == "claude-3-5-sonnet"
    assert ledger.canonical_model("gemini", "Gemini 2.5 Flash-Lite") == "gemini-2.5-flash-lite"
    assert ledger.canonical_model("openai", "gpt-4.1-2025-04-14") == "gpt-4.1"
    assert ledger.hints_match("sk-...1111", "sk-proj-...1111")
    assert ledger.hints_match("sk-ant-api03-R2D...igAA", "sk-ant-api03-R2D...igAA")
    assert not ledger.hints_match("sk-...1111", "sk-...2111")
    assert not ledger.hints_match("sk-...1111", "xai-...1111")
