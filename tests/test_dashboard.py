"""The dashboard through a real Datasette: who sees what, and that every view's numbers
equal the same figures computed here straight from the `usage` rows.

The rows are written by the real recorder (so the rollups are the ones it keeps). Most
tests use Datasette's in-process client; logins, logout and bearer tokens go through a
real `llm-monitor dashboard` server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import random
import re
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import markupsafe
import pytest
import yaml

from llm_monitor.dashboard import CONFIG_DIR, formatting, make_datasette
from llm_monitor.dashboard.views import model_family
from llm_monitor.store.recorder import Recorder
from llm_monitor.store.rollups import latency_le
from llm_monitor.usage import UsageRecord, utc_timestamp
from tests.conftest import invoke, invoke_with_password
from tests.proxy import log_in, running_dashboard

PASSWORDS = {"Acme": "acme-password-1", "Globex": "globex-password-2", "Ops": "ops-password-3"}
EMAILS = {"Acme": "finance@acme.example", "Globex": "it@globex.example", "Ops": "ops@x.example"}
ORG_VIEWS = [
    "budgets",
    "alerts",
    "summary",
    "timeline",
    "by_model",
    "by_token",
    "by_user",
    "by_tag",
    "recent_requests",
    "recent_errors",
    "my_tokens",
    "by_family",
    "family_models",
    "cost_series",
    "month_spend",
    "unpriced",
    "request",
    "reconciliation",
]
ADMIN_VIEWS = ["admin_orgs", "admin_unpriced_models", "admin_reconciliation"]
MODELS = [
    ("openai", "gpt-4o-mini"),
    ("openai", "gpt-4o"),
    ("anthropic", "claude-sonnet-4-5"),
    ("gemini", "gemini-2.5-flash"),
    ("openai", "mystery-model"),  # no price: cost NULL, never $0
]


def create_org(db_path: Path, name: str, *extra: str) -> dict[str, Any]:
    password = PASSWORDS[name]
    args = ["orgs", "create", name, "--email", EMAILS[name], "--password", "--json", *extra]
    result = invoke_with_password(db_path, password, *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output.splitlines()[-1])


def varied_usage(org_tokens: dict[int, list[int]], now: float, count: int) -> list[UsageRecord]:
    """Requests over the last 65 days: several models, users, tags, streams and errors."""
    rng = random.Random(7)
    orgs = list(org_tokens)
    records = []
    for _ in range(count):
        org_id = rng.choices(orgs, weights=[6, 3, 1][: len(orgs)])[0]
        provider, model = rng.choice(MODELS)
        error = rng.random() < 0.06
        # As OpenAI does: asked for by alias, answered by a dated snapshot; errors carry
        # only the alias (the models-by-family view puts both under one model).
        answered = "gpt-4o-mini-2024-07-18" if model == "gpt-4o-mini" and not error else None
        streamed = rng.random() < 0.4
        # Most requests recent, so that a day and a week hold enough rows to compare.
        age = rng.random() ** 2 * 65 * 86400
        records.append(
            UsageRecord(
                ts=utc_timestamp(now - age),
                org_id=org_id,
                token_id=rng.choice(org_tokens[org_id]),
                provider=provider,
                method="POST",
                path="/v1/chat/completions",
                model=model,
                response_model=answered,
                status=rng.choice([429, 500]) if error else 200,
                outcome="provider_error" if error else "ok",
                streamed=streamed,
                input_tokens=None if error else rng.randint(10, 5000),
                cached_input_tokens=None if error else rng.choice([0, 0, 512]),
                output_tokens=None if error else rng.randint(1, 800),
                reasoning_tokens=None if error else rng.choice([0, 0, 64]),
                latency_ms=rng.lognormvariate(6, 0.8),
                ttft_ms=rng.uniform(50, 400) if streamed and not error else None,
                user=rng.choice([None, "alice", "bob", "svc-batch"]),
                tags=rng.choice(
                    [None, '{"env":"prod"}', '{"env":"prod","feature":"search"}', '{"env":"dev"}']
                ),
            )
        )
    return records


class Site:
    """The usage database with three organisations, and Datasette over it in-process."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        invoke(db_path, "init")
        self.orgs = {name: create_org(db_path, name) for name in ("Acme", "Globex")}
        self.orgs["Ops"] = create_org(db_path, "Ops", "--admin")
        self.org_ids = {name: org["org_id"] for name, org in self.orgs.items()}
        tokens: dict[int, list[int]] = {}
        for name, org in self.orgs.items():
            second = json.loads(
                invoke(db_path, "tokens", "create", "--org", name, "--name", "batch", "--json")
            )
            tokens[org["org_id"]] = [org["token_id"], second["token_id"]]
        self.now = time.time()
        recorder = Recorder(db_path)
        recorder.start()
        for record in varied_usage(tokens, self.now, 3000):
            recorder.submit(record)
        recorder.close()
        self.datasette = make_datasette(db_path)
        self.loop = asyncio.new_event_loop()

    def get(self, path: str, actor: dict | None = None, **kwargs: Any) -> httpx.Response:
        cookies = {"ds_actor": self.datasette.sign({"a": actor}, "actor")} if actor else None
        return self.loop.run_until_complete(
            self.datasette.client.get(path, cookies=cookies, **kwargs)
        )

    def actor(self, name: str) -> dict[str, Any]:
        """The actor a login of `name` gets (see llm_monitor.dashboard.auth)."""
        org_id = self.org_ids[name]
        return {"id": f"org:{org_id}", "org_id": org_id, "display": name, "admin": name == "Ops"}

    def view(self, name: str, actor: dict | None, **params: str) -> list[dict[str, Any]]:
        response = self.get(
            f"/llm-monitor/{name}.json", actor, params={**params, "_shape": "objects"}
        )
        assert response.status_code == 200, response.text
        return response.json()["rows"]

    def usage(self, org_id: int | None = None) -> list[dict[str, Any]]:
        with sqlite3.connect(self.db_path) as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute("select * from usage order by ts").fetchall()
        return [dict(r) for r in rows if org_id is None or r["org_id"] == org_id]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    site = Site(tmp_path_factory.mktemp("dashboard") / "llm-monitor.db")
    yield site
    site.loop.close()


# What a view should say, worked out from the rows.


def cost(rows: list[dict]) -> float | None:
    """Priced cost; None when nothing in the group was priced but something should be."""
    total = sum(r["cost_usd"] or 0 for r in rows)
    unpriced = sum(r["priced"] == 0 for r in rows)
    return round(total, 6) if unpriced == 0 or total > 0 else None


def mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def p95(values: list[float]) -> float | None:
    """Nearest rank: the smallest value with at least 95% of the values at or below it,
    as the latency histogram gives it: the upper bound of that value's bucket."""
    if not values:
        return None
    exact = sorted(values)[math.ceil(0.95 * len(values)) - 1]
    bound = latency_le(exact)
    assert exact <= bound < exact * 1.091  # at most 9% above the exact value
    return round(bound, 1)


def totals(rows: list[dict]) -> dict[str, Any]:
    return {
        "requests": len(rows),
        "input_tokens": sum(r["input_tokens"] or 0 for r in rows),
        "output_tokens": sum(r["output_tokens"] or 0 for r in rows),
        "cost_usd": cost(rows),
        "errors": sum(r["outcome"] != "ok" for r in rows),
        "unpriced": sum(r["priced"] == 0 for r in rows),
    }


def group(rows: list[dict], key: Callable[[dict], Any]) -> dict[Any, list[dict]]:
    groups: dict[Any, list[dict]] = defaultdict(list)
    for row in rows:
        for k in key(row):
            groups[k].append(row)
    return groups


def assert_same(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    for field, value in expected.items():
        if isinstance(value, float):
            assert actual[field] == pytest.approx(value, abs=2e-6), field
        else:
            assert actual[field] == value, field


def last_30_days(rows: list[dict]) -> list[dict]:
    start = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=29)).isoformat()
    return [r for r in rows if r["ts"] >= start]


# Views: numbers.


@pytest.mark.parametrize("org", ["Acme", "Globex"])
@pytest.mark.parametrize("period", ["day", "week", "month"])
def test_summary_equals_direct_sql(site: Site, org: str, period: str) -> None:
    rows = site.view("summary", site.actor(org), period=period)
    metrics = {r["metric"]: r for r in rows}
    start, stop = rows[0]["period_start"][:13], rows[0]["period_end"][:13]
    days = {"day": 1, "week": 7, "month": 30}[period]
    assert dt.datetime.fromisoformat(stop) - dt.datetime.fromisoformat(start) == dt.timedelta(
        days=days
    )
    prev = (dt.datetime.fromisoformat(start) - dt.timedelta(days=days)).strftime("%Y-%m-%dT%H")
    usage = site.usage(site.org_ids[org])
    windows = {
        "current": [r for r in usage if start <= r["ts"] < stop],
        "previous": [r for r in usage if prev <= r["ts"] < start],
    }
    assert windows["current"] and windows["previous"]
    for column, window in windows.items():
        expected = {
            "requests": len(window),
            "cost_usd": cost(window),
            "unpriced_requests": sum(r["priced"] == 0 for r in window),
            "input_tokens": sum(r["input_tokens"] or 0 for r in window),
            "cached_input_tokens": sum(r["cached_input_tokens"] or 0 for r in window),
            "output_tokens": sum(r["output_tokens"] or 0 for r in window),
            "reasoning_tokens": sum(r["reasoning_tokens"] or 0 for r in window),
            "avg_latency_ms": mean([r["latency_ms"] for r in window]),
            "p95_latency_ms": p95([r["latency_ms"] for r in window]),
            "avg_ttft_ms": mean([r["ttft_ms"] for r in window if r["ttft_ms"] is not None]),
            "error_rate_pct": round(
                100 * sum(r["outcome"] != "ok" for r in window) / len(window), 2
            ),
        }
        for metric, value in expected.items():
            assert metrics[metric][column] == pytest.approx(value, abs=0.051), (metric, column)
    requests = metrics["requests"]
    change = round(100 * (requests["current"] - requests["previous"]) / requests["previous"], 1)
    assert requests["change_pct"] == change


@pytest.mark.parametrize("org", ["Acme", "Globex"])
@pytest.mark.parametrize("granularity", ["day", "hour"])
def test_timeline_equals_direct_sql(site: Site, org: str, granularity: str) -> None:
    today = dt.datetime.now(dt.UTC).date()
    start, stop = today - dt.timedelta(days=13), today
    rows = site.view(
        "timeline",
        site.actor(org),
        **{"from": start.isoformat(), "to": stop.isoformat(), "granularity": granularity},
    )
    width = 13 if granularity == "hour" else 10
    assert len(rows) == 14 * (24 if granularity == "hour" else 1)  # empty buckets too
    usage = [
        r
        for r in site.usage(site.org_ids[org])
        if start.isoformat() <= r["ts"][:10] <= stop.isoformat()
    ]
    buckets = group(usage, lambda r: [r["ts"][:width]])
    assert sum(r["requests"] for r in rows) == len(usage) > 0
    for row in rows:
        bucket = row["bucket"][:width]
        expected = totals(buckets.get(bucket, []))
        if not buckets.get(bucket):
            expected["cost_usd"] = 0.0
        del expected["errors"]  # named `errors` too, but checked through requests here
        assert_same(row, expected)


@pytest.mark.parametrize("org", ["Acme", "Globex"])
def test_by_model_equals_direct_sql(site: Site, org: str) -> None:
    rows = site.view("by_model", site.actor(org))
    usage = last_30_days(site.usage(site.org_ids[org]))
    models = group(usage, lambda r: [r["response_model"] or r["model"]])
    assert {r["model"] for r in rows} == set(models)
    all_cost = sum(r["cost_usd"] or 0 for r in usage)
    for row in rows:
        model_rows = models[row["model"]]
        assert_same(row, totals(model_rows))
        assert row["avg_latency_ms"] == mean([r["latency_ms"] for r in model_rows])
        ttft = [r["ttft_ms"] for r in model_rows if r["ttft_ms"] is not None]
        assert row["avg_ttft_ms"] == pytest.approx(mean(ttft), abs=0.051)
        share = sum(r["cost_usd"] or 0 for r in model_rows) / all_cost * 100
        assert row["cost_share_pct"] == pytest.approx(share, abs=0.051)
    mystery = next(r for r in rows if r["model"] == "mystery-model")
    assert mystery["cost_usd"] is None and mystery["unpriced"] > 0  # never $0


@pytest.mark.parametrize("org", ["Acme", "Globex"])
def test_by_token_user_and_tag_equal_direct_sql(site: Site, org: str) -> None:
    usage = last_30_days(site.usage(site.org_ids[org]))
    actor = site.actor(org)
    with sqlite3.connect(site.db_path) as conn:
        labels = dict(conn.execute("select id, label from monitor_tokens").fetchall())
    by_token = group(usage, lambda r: [labels[r["token_id"]]])
    by_user = group(usage, lambda r: [r["user"] or "(none)"])
    by_tag = group(
        usage,
        lambda r: [f"{k}={v}" for k, v in json.loads(r["tags"] or "{}").items()] or ["(none)"],
    )
    for view, column, expected in [
        ("by_token", "token", by_token),
        ("by_user", "user", by_user),
        ("by_tag", "tag", by_tag),
    ]:
        rows = site.view(view, actor)
        assert {r[column] for r in rows} == set(expected), view
        for row in rows:
            assert_same(row, totals(expected[row[column]]))
    prod_only = site.view("by_tag", actor, key="env")
    assert {r["tag"] for r in prod_only} == {"env=prod", "env=dev"}


@pytest.mark.parametrize("org", ["Acme", "Globex"])
def test_recent_requests_and_errors_equal_direct_sql(site: Site, org: str) -> None:
    usage = site.usage(site.org_ids[org])[::-1]  # newest first
    actor = site.actor(org)
    cases = [
        ("recent_requests", {}, usage),
        ("recent_requests", {"model": "gpt-4o"}, [r for r in usage if r["model"] == "gpt-4o"]),
        ("recent_requests", {"status": "429"}, [r for r in usage if r["status"] == 429]),
        ("recent_errors", {}, [r for r in usage if r["outcome"] != "ok"]),
        ("recent_errors", {"status": "500"}, [r for r in usage if r["status"] == 500]),
        (
            "recent_errors",
            {"outcome": "provider_error", "model": "gpt-4o-mini"},
            [r for r in usage if r["outcome"] == "provider_error" and r["model"] == "gpt-4o-mini"],
        ),
        (
            "recent_requests",
            {"model": "gpt-4o-mini-2024-07-18"},
            [r for r in usage if r["response_model"] == "gpt-4o-mini-2024-07-18"],
        ),
        (
            "recent_requests",
            {"model": "gpt-4o", "status": "200"},
            [r for r in usage if r["model"] == "gpt-4o" and r["status"] == 200],
        ),
    ]
    for view, params, expected in cases:
        rows = site.view(view, actor, **params)
        assert [r["ts"] for r in rows] == [r["ts"] for r in expected[:100]], (view, params)
        assert rows, (view, params)


def test_my_tokens_shows_no_hash(site: Site) -> None:
    rows = site.view("my_tokens", site.actor("Acme"))
    with sqlite3.connect(site.db_path) as conn:
        expected = conn.execute(
            "select prefix, token_hash from monitor_tokens where org_id = ?",
            [site.org_ids["Acme"]],
        ).fetchall()
    assert sorted(r["prefix"] for r in rows) == sorted(prefix for prefix, _ in expected)
    text = json.dumps(rows)
    assert all(token_hash not in text for _, token_hash in expected)
    assert "token_hash" not in rows[0]
    usage = last_30_days(site.usage(site.org_ids["Acme"]))
    assert sum(r["requests_30d"] for r in rows) == len(usage)
    with sqlite3.connect(site.db_path) as conn:
        labels = dict(conn.execute("select prefix, id from monitor_tokens").fetchall())
    for row in rows:
        token_rows = [r for r in usage if r["token_id"] == labels[row["prefix"]]]
        assert row["cost_usd_30d"] == pytest.approx(cost(token_rows), abs=2e-6)
        assert row["unpriced_30d"] == sum(r["priced"] == 0 for r in token_rows)


def test_admin_views_equal_direct_sql(site: Site) -> None:
    admin = site.actor("Ops")
    rows = {r["org"]: r for r in site.view("admin_orgs", admin)}
    assert set(rows) == {"Acme", "Globex", "Ops"}
    for name, org_id in site.org_ids.items():
        usage = last_30_days(site.usage(org_id))
        expected = totals(usage)
        errors = expected.pop("errors")
        assert_same(rows[name], expected)
        assert rows[name]["error_rate_pct"] == round(100 * errors / len(usage), 2)
    unpriced = site.view("admin_unpriced_models", {"id": "root"})
    # Only models without any price: not requests whose usage was never seen.
    expected = group(
        [r for r in site.usage() if r["unpriced_reason"] == "no_price"],
        lambda r: [(r["provider"], r["response_model"] or r["model"])],
    )
    assert {(r["provider"], r["model"]): r["unpriced_requests"] for r in unpriced} == {
        key: len(rows) for key, rows in expected.items()
    }
    mystery = next(r for r in unpriced if r["model"] == "mystery-model")
    assert mystery["orgs"] == 3 and mystery["unpriced_requests"] > 0


def family_totals(rows: list[dict]) -> dict[str, Any]:
    expected = totals(rows)
    expected["error_rate_pct"] = round(100 * expected["errors"] / len(rows), 2)
    return expected


@pytest.mark.parametrize("org", ["Acme", "Globex"])
def test_models_by_family_equal_direct_sql(site: Site, org: str) -> None:
    rows = site.view("by_family", site.actor(org))
    usage = last_30_days(site.usage(site.org_ids[org]))
    families = group(usage, lambda r: [model_family(r["response_model"] or r["model"])])
    assert [r["family"] for r in rows][: len(families)] and {r["family"] for r in rows} == set(
        families
    )
    all_cost = sum(r["cost_usd"] or 0 for r in usage)
    for row in rows:
        assert_same(row, family_totals(families[row["family"]]))
        share = sum(r["cost_usd"] or 0 for r in families[row["family"]]) / all_cost * 100
        assert row["cost_share_pct"] == pytest.approx(share, abs=0.051)
    # Requested and answered names reconciled: gpt-4o-mini's errors (under the alias) and
    # its spend (under the snapshot) are one model's.
    mini = next(r for r in rows if r["family"] == "gpt-4o-mini")
    assert mini["snapshots"] == 2 and mini["errors"] > 0 and mini["cost_usd"] > 0
    assert 0 < mini["error_rate_pct"] < 20
    costs = [r["cost_usd"] or 0 for r in rows]
    assert costs == sorted(costs, reverse=True)  # ranked by cost
    # The drill-down: the names behind one model.
    snapshots = site.view("family_models", site.actor(org), family="gpt-4o-mini")
    by_name = group(families["gpt-4o-mini"], lambda r: [r["response_model"] or r["model"]])
    assert (
        {r["model"] for r in snapshots}
        == set(by_name)
        == {
            "gpt-4o-mini",
            "gpt-4o-mini-2024-07-18",
        }
    )
    for row in snapshots:
        assert_same(row, family_totals(by_name[row["model"]]))


@pytest.mark.parametrize("org", ["Acme", "Globex"])
@pytest.mark.parametrize("by", ["provider", "model"])
def test_cost_series_equals_direct_sql(site: Site, org: str, by: str) -> None:
    rows = site.view("cost_series", site.actor(org), by=by)
    usage = last_30_days(site.usage(site.org_ids[org]))

    def series(r: dict) -> str:
        return model_family(r["response_model"] or r["model"]) if by == "model" else r["provider"]

    days = group(usage, lambda r: [(r["ts"][:10], series(r))])
    assert {(r["day"], r["series"]) for r in rows} == set(days)  # fewer than 8 series here
    for row in rows:
        assert_same(
            row,
            {
                k: totals(days[(row["day"], row["series"])])[k]
                for k in ("requests", "cost_usd", "unpriced")
            },
        )


@pytest.mark.parametrize("org", ["Acme", "Globex"])
def test_month_spend_and_projection_equal_direct_sql(site: Site, org: str) -> None:
    before = dt.datetime.now(dt.UTC)
    rows = {r["figure"]: r for r in site.view("month_spend", site.actor(org))}
    usage = site.usage(site.org_ids[org])
    today = before.date()
    month_start = today.replace(day=1)
    next_month = (month_start + dt.timedelta(days=32)).replace(day=1)
    last_month_start = (month_start - dt.timedelta(days=1)).replace(day=1)
    this_month = [r for r in usage if r["ts"][:10] >= month_start.isoformat()]
    last_month = [
        r for r in usage if last_month_start.isoformat() <= r["ts"][:10] < month_start.isoformat()
    ]
    assert last_month
    mtd_totals = {k: totals(this_month)[k] for k in ("requests", "cost_usd", "unpriced")}
    assert_same(rows["month to date"], mtd_totals | {"month": month_start.isoformat()[:7]})
    assert_same(rows["last month"], {k: totals(last_month)[k] for k in ("requests", "cost_usd")})
    assert rows["last month"]["month"] == last_month_start.isoformat()[:7]
    # Month to date, plus the last 7 whole days' daily average for the rest of the month.
    week = [
        r
        for r in usage
        if (today - dt.timedelta(days=7)).isoformat() <= r["ts"][:10] < today.isoformat()
    ]
    rate = sum(r["cost_usd"] or 0 for r in week) / 7
    remaining = (dt.datetime.combine(next_month, dt.time(), dt.UTC) - before).total_seconds()
    mtd = sum(r["cost_usd"] or 0 for r in this_month)
    projected = rows["projected month"]
    assert projected["daily_rate_usd"] == pytest.approx(rate, abs=2e-6)
    assert projected["remaining_days"] == pytest.approx(remaining / 86400, abs=0.01)
    assert projected["cost_usd"] == pytest.approx(mtd + rate * remaining / 86400, rel=1e-4)
    assert rows["projected month"]["days_in_month"] == (next_month - month_start).days


@pytest.mark.parametrize("org", ["Acme", "Globex"])
def test_unpriced_requests_with_reasons_equal_direct_sql(site: Site, org: str) -> None:
    rows = site.view("unpriced", site.actor(org))
    usage = [r for r in last_30_days(site.usage(site.org_ids[org])) if r["priced"] == 0]
    models = group(usage, lambda r: [(r["provider"], r["response_model"] or r["model"])])
    assert {(r["provider"], r["model"]): r["unpriced_requests"] for r in rows} == {
        key: len(group_rows) for key, group_rows in models.items()
    }
    assert next(r for r in rows if r["model"] == "mystery-model")["reason"] == (
        "no price for this model"
    )


@pytest.mark.parametrize("org", ["Acme", "Globex"])
def test_a_request_page_shows_everything_recorded(site: Site, org: str) -> None:
    actor = site.actor(org)
    usage = site.usage(site.org_ids[org])
    row = next(r for r in reversed(usage) if r["priced"] == 1)
    [shown] = site.view("request", actor, id=str(row["id"]))
    assert {k: shown[k] for k in row} == row  # every column of `usage`, as recorded
    page = site.get("/llm-monitor/request", actor, params={"id": row["id"]}).text
    assert f"Request #{row['id']}" in page and 'id="cost"' in page
    assert formatting.usd(row["cost_usd"]) in page
    for column in row:
        assert f"<dt>{column}</dt>" in page, column
    unpriced = next(r for r in usage if r["priced"] == 0)
    page = site.get("/llm-monitor/request", actor, params={"id": unpriced["id"]}).text
    assert "Billable, but its cost is unknown" in page
    assert f"<code>{unpriced['unpriced_reason']}</code>" in page


# Who sees what.


def test_anonymous_sees_nothing(site: Site) -> None:
    for view in ORG_VIEWS + ADMIN_VIEWS:
        page = site.get(f"/llm-monitor/{view}")
        assert page.status_code == 302
        assert page.headers["location"].startswith("/-/login?next=%2Fllm-monitor%2F")
        api = site.get(f"/llm-monitor/{view}.json")
        assert api.status_code == 403 and api.json()["ok"] is False
    # A magic parameter the actor lacks is not taken from the query string.
    forged = site.get("/llm-monitor/summary.json", params={"_actor_org_id": "1"})
    assert forged.status_code == 403
    for path in ["/", "/llm-monitor", "/llm-monitor/usage", "/-/metadata"]:
        assert site.get(path).status_code == 302, path


@pytest.mark.parametrize("org", ["Acme", "Globex"])
def test_an_organisation_sees_only_its_own_rows(site: Site, org: str) -> None:
    actor = site.actor(org)
    other = "Globex" if org == "Acme" else "Acme"
    denied = [
        "/llm-monitor/usage",
        "/llm-monitor/usage.json",
        "/llm-monitor/orgs.json",
        "/llm-monitor/monitor_tokens.json",
        "/llm-monitor/dashboard_tokens.json",
        "/llm-monitor/usage_hourly.json",
        "/llm-monitor.json?sql=select+*+from+usage",
        "/llm-monitor?sql=select+1",
        "/llm-monitor.db",
        "/llm-monitor/usage/1.json",
        "/llm-monitor/orgs/1",
        "/_internal",
        "/_internal/tables.json",
        "/-/permissions",
    ] + [f"/llm-monitor/{view}.json" for view in ADMIN_VIEWS]
    for path in denied:
        assert site.get(path, actor).status_code == 403, path
    # The organisation is the actor's, whatever the query string says.
    mine = site.view("recent_requests", actor)
    forged = site.view("recent_requests", actor, _actor_org_id=str(site.org_ids[other]))
    assert mine == forged
    own_ts = {r["ts"] for r in site.usage(site.org_ids[org])}
    assert {r["ts"] for r in mine} <= own_ts
    assert site.view("summary", actor) != site.view("summary", site.actor(other))
    # Another organisation's request is not found, by page or API, whatever is forged.
    theirs = site.usage(site.org_ids[other])[-1]["id"]
    forged_id = {"id": str(theirs), "_actor_org_id": str(site.org_ids[other])}
    for params in [{"id": str(theirs)}, forged_id]:
        assert site.view("request", actor, **params) == []
        page = site.get("/llm-monitor/request", actor, params=params).text
        assert f"There is no request #{theirs}" in page
    for view in ["by_family", "family_models", "cost_series", "month_spend", "unpriced"]:

        def stable(rows: list[dict]) -> list[dict]:  # a projection moves with the clock
            return [
                {k: v for k, v in r.items() if r.get("figure") != "projected month"} for r in rows
            ]

        forged = site.view(view, actor, _actor_org_id=str(site.org_ids[other]))
        assert stable(forged) == stable(site.view(view, actor)), view
    assert site.view("by_family", actor) != site.view("by_family", site.actor(other))
    # The database page lists the views and no table.
    page = site.get("/llm-monitor", actor).text
    assert "summary" in page and "usage_hourly" not in page


def test_admins_see_every_organisation_and_run_sql(site: Site) -> None:
    for admin in [{"id": "root"}, site.actor("Ops")]:
        response = site.get("/llm-monitor.json?sql=select+count(*)+as+n+from+usage", admin)
        assert response.json()["rows"] == [[3000]]
        assert site.get("/llm-monitor/usage.json", admin).status_code == 200
    # Root has no organisation of its own: the organisation views are not for it.
    assert site.get("/llm-monitor/summary.json", {"id": "root"}).status_code == 403


# Pages, charts and parameters.


def test_every_query_is_guarded_and_has_a_designed_page(site: Site) -> None:
    queries = yaml.safe_load((CONFIG_DIR / "metadata.yml").read_text())["databases"]["llm-monitor"][
        "queries"
    ]
    assert set(queries) == set(ORG_VIEWS + ADMIN_VIEWS)
    templates = CONFIG_DIR / "templates"
    for name, query in queries.items():
        actor = {"id": "root"} if name in ADMIN_VIEWS else site.actor("Acme")
        assert query["allow"] in ({"org_id": "*"}, {"id": "root", "admin": True}), name
        if ":_actor_org_id" in query["sql"]:
            assert query["allow"] == {"org_id": "*"}, name
        assert query["question"] and query["title"], name
        assert (templates / f"query-llm-monitor-{name}.html").exists(), name
        columns = site.get(f"/llm-monitor/{name}.json", actor).json()["columns"]
        page = site.get(f"/llm-monitor/{name}", actor)
        assert page.status_code == 200
        assert f"<title>{markupsafe.escape(query['title'])}: LLM Monitor</title>" in page.text
        # A designed page: no SQL, no SQL form, no datasette-vega panel (an admin gets a
        # link to the query in the SQL console).
        for text in ["Custom SQL", "Run SQL", "<textarea", "sql-query", "export-links"]:
            assert text not in page.text, (name, text)
        assert ("Open in the SQL console" in page.text) == (name in ADMIN_VIEWS), name
        if name != "request":
            chart = query["chart"]
            for key in ("x", "label", "value", "series"):
                assert key not in chart or chart[key] in columns, (name, key)
            assert 'id="lm-chart"' in page.text and 'id="lm-rows"' in page.text, name
        assert "/-/llm-monitor/static/llm-monitor.js" in page.text
        sources = re.findall(
            r'<(?:script[^>]* src|link rel="stylesheet" href)="([^"]+)"', page.text
        )
        assert sources and all(src.startswith("/") for src in sources), sources  # no CDN
        csv = site.get(f"/llm-monitor/{name}.csv", actor)
        assert csv.status_code == 200 and csv.text.splitlines()[0] == ",".join(columns)


def test_a_view_page_formats_its_table(site: Site) -> None:
    page = site.get("/llm-monitor/by_model", site.actor("Acme")).text
    rows = site.view("by_model", site.actor("Acme"))
    priced = next(r for r in rows if r["cost_usd"])
    assert f">{formatting.usd(priced['cost_usd'])}<" in page
    assert re.search(r'<td data-label="Cost" class="lm-usd num[^"]*"', page)
    assert f">{priced['requests']:,}<" in page
    # Its form: date pickers with the dates used, presets, CSV and JSON.
    assert 'type="date" id="lm-from" name="from"' in page
    today = dt.datetime.now(dt.UTC).date()
    assert f'value="{(today - dt.timedelta(days=29)).isoformat()}"' in page
    assert "Last 90 days" in page and ".csv?" in page and ".json" in page
    errors = site.get("/llm-monitor/recent_errors", site.actor("Acme")).text
    assert '<select id="lm-outcome" name="outcome">' in errors
    assert '<option value="gpt-4o-mini-2024-07-18">' in errors  # models seen, as shown
    assert '<a href="/llm-monitor/request?id=' in errors


def test_usd_and_numbers_are_formatted_for_reading() -> None:
    assert formatting.usd(24.765653) == "$24.77"
    assert formatting.usd(3.8e-06) == "$0.0000038"
    assert formatting.usd(0.0042) == "$0.0042"
    # A sum just under a power of ten keeps two significant digits once rounded.
    assert formatting.usd(0.000999996) == "$0.0010"
    assert formatting.usd(0.009996) == "$0.01"
    assert formatting.usd(-0.000999996) == "-$0.0010"
    assert formatting.usd(1234567.891) == "$1,234,567.89"
    assert formatting.usd(0) == "$0.00"
    assert formatting.usd(None) == ""
    assert formatting.cell("cost_usd", None).text == "—"  # unknown, never $0
    assert formatting.cell("input_tokens", 1234567).text == "1,234,567"
    assert formatting.cell("change_pct", 12.5).text == "+12.5%"
    assert formatting.cell("avg_latency_ms", 1234.5).text == "1,234 ms"
    assert formatting.cell("ts", "2026-11-23T20:15:45.542Z").text == "2026-11-23 20:15:45"
    assert formatting.label("avg_ttft_ms") == "Avg time to first token"


def test_landing_page_is_the_overview_and_links_every_view(site: Site) -> None:
    page = site.get("/", site.actor("Acme")).text
    assert "<title>Overview: LLM Monitor</title>" in page
    assert 'id="lm-overview" data-base="/llm-monitor" data-refresh="15"' in page
    for part in [
        "lm-month",
        "lm-cards",
        "lm-chart",
        "lm-top-models",
        "lm-top-tokens",
        "lm-top-users",
        "lm-unpriced",
        "lm-recent",
        "lm-alerts",
    ]:
        assert f'id="{part}"' in page, part
    for view in ORG_VIEWS:
        assert f'href="/llm-monitor/{view}"' in page, view
    assert "admin_orgs" not in page and 'href="/llm-monitor">SQL' not in page
    admin = site.get("/", site.actor("Ops")).text
    assert "admin_orgs" in admin and '<a href="/llm-monitor">SQL</a>' in admin


def test_static_files_come_from_the_package_and_hold_no_data(site: Site) -> None:
    for name in ["llm-monitor.js", "llm-monitor.css"]:
        served = site.get(f"/-/llm-monitor/static/{name}")  # public: the login page uses it
        assert served.status_code == 200
        assert served.content == (CONFIG_DIR / "static" / name).read_bytes()
        # No CDN: the only absolute address is the SVG namespace (a name, never fetched).
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", served.text)
    for path in [
        "/-/llm-monitor/static/../metadata.yml",
        "/-/llm-monitor/static/%2e%2e/x.js",
        "/-/llm-monitor/static/",
        "/-/llm-monitor/static/nope.js",
    ]:
        for actor in (None, site.actor("Acme")):  # anonymous: sent to the login page
            assert site.get(path, actor).status_code in (302, 404), path


@pytest.mark.parametrize(
    ("view", "params", "message"),
    [
        ("summary", {"period": "year"}, "period must be one of day, week, month; got 'year'"),
        ("timeline", {"granularity": "minute"}, "granularity must be one of hour, day"),
        ("timeline", {"from": "2026-13-01"}, "from must be a date as YYYY-MM-DD"),
        ("by_model", {"to": "yesterday"}, "to must be a date as YYYY-MM-DD"),
        ("by_model", {"from": "2026-06-02", "to": "2026-06-01"}, "from (2026-06-02) is after to"),
        ("recent_requests", {"status": "teapot"}, "status must be an HTTP status such as 429"),
        ("recent_errors", {"outcome": "oops"}, "outcome must be one of provider_error"),
        ("recent_requests", {"status": "\u0967\u0968\u0969"}, "status must be an HTTP status"),
        ("by_user", {"from": "2026-W44-1"}, "from must be a date as YYYY-MM-DD"),
        ("by_token", {"to": "9999-12-31"}, "to must be a date as YYYY-MM-DD"),
        (
            "timeline",
            {"from": "2026-09-01", "to": "2026-11-01", "granularity": "hour"},
            "1,488 hours between 2026-09-01 and 2026-11-01: a timeline has at most 1,000",
        ),
        ("timeline", {"from": "2020-01-01"}, "a timeline has at most 1,000 buckets"),
        ("summary", {"_timelimit": "abc"}, "_timelimit must be a number of milliseconds"),
        ("request", {"id": "1 or 1=1"}, "id must be a request number such as 42"),
        ("cost_series", {"by": "colour"}, "by must be one of provider, model"),
        ("cost_series", {"from": "2026-01-01", "to": "2026-12-01"}, "at most 125 here"),
    ],
)
def test_bad_parameters_get_a_clear_400(site: Site, view: str, params: dict, message: str) -> None:
    response = site.get(f"/llm-monitor/{view}.json", site.actor("Acme"), params=params)
    assert response.status_code == 400
    assert message in response.json()["error"]
    # A page is drawn again, with the message beside its field and no results.
    page = site.get(f"/llm-monitor/{view}", site.actor("Acme"), params=params)
    assert page.status_code == 400 and str(markupsafe.escape(message)) in page.text
    assert 'class="lm-error"' in page.text and 'id="lm-chart"' not in page.text
    if not params.get("_timelimit"):
        assert 'aria-invalid="true"' in page.text
    # However the database's name is spelled in the address.
    tilde = site.get(f"/llm~2Dmonitor/{view}.json", site.actor("Acme"), params=params)
    assert tilde.status_code == 400 and message in tilde.json()["error"]


def test_parameters_are_checked_only_where_a_view_declares_them(site: Site) -> None:
    # Table pages (admins) keep Datasette's own column filters.
    table = site.get("/llm-monitor/usage.json?outcome=ok&status=200", {"id": "root"})
    assert table.status_code == 200
    # `to` alone: `from` is 29 days before it, not before today.
    rows = site.view("timeline", site.actor("Acme"), to="2026-01-15")
    assert (rows[0]["bucket"], rows[-1]["bucket"], len(rows)) == ("2025-12-17", "2026-01-15", 30)
    post = site.loop.run_until_complete(
        site.datasette.client.post(
            "/llm-monitor/summary.json",
            cookies={"ds_actor": site.datasette.sign({"a": site.actor("Acme")}, "actor")},
        )
    )
    assert post.status_code == 405


# A real server: logins, logout and bearer tokens.


@pytest.fixture(scope="module")
def server(site: Site) -> Iterator[str]:
    with running_dashboard(site.db_path, site.db_path.parent / "dashboard.log") as url:
        yield url


def test_login_and_logout(server: str) -> None:
    with httpx.Client(base_url=server) as browser:
        assert browser.get("/").headers["location"] == "/-/login?next=%2F"
        wrong = log_in(browser, EMAILS["Acme"], "not-the-password")
        assert wrong.status_code == 401 and "Wrong email or password." in wrong.text
        unknown = log_in(browser, "nobody@x.example", PASSWORDS["Acme"])
        assert unknown.status_code == 401
        ok = log_in(browser, EMAILS["Acme"].upper(), PASSWORDS["Acme"], "/llm-monitor/timeline")
        assert ok.status_code == 302 and ok.headers["location"] == "/llm-monitor/timeline"
        cookie = next(c for c in browser.cookies.jar if c.name == "ds_actor")
        assert cookie.has_nonstandard_attr("HttpOnly")
        landing = browser.get("/")
        assert landing.status_code == 200 and "LLM Monitor: Acme" in landing.text
        assert browser.get("/llm-monitor/summary.json").status_code == 200
        assert browser.get("/llm-monitor/usage.json").status_code == 403
        logout = browser.get("/-/logout")
        csrftoken = re.search(r'name="csrftoken" value="([^"]+)"', logout.text).group(1)
        assert browser.post("/-/logout", data={"csrftoken": csrftoken}).status_code == 302
        assert browser.get("/").status_code == 302
        assert browser.get("/llm-monitor/summary.json").status_code == 403


def test_login_never_redirects_off_site(server: str) -> None:
    for target in [
        "//evil.example/",
        "https://evil.example/",
        "/\\evil.example",
        "/\t/evil.example/",
        "/\r\n/evil.example",
    ]:
        with httpx.Client(base_url=server) as browser:
            response = log_in(browser, EMAILS["Globex"], PASSWORDS["Globex"], target)
            assert response.headers["location"] == "/", target


def test_a_login_posted_from_another_site_is_refused(server: str) -> None:
    form = {"email": EMAILS["Globex"], "password": PASSWORDS["Globex"]}
    bare = httpx.post(f"{server}/-/login", data=form)  # no CSRF cookie: not our form
    assert bare.status_code == 403 and "set-cookie" not in bare.headers
    for body in [b"email=\xff&password=x", b"email=" + b"x" * 20000]:
        garbage = httpx.post(
            f"{server}/-/login",
            content=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert garbage.status_code == 400 and "Traceback" not in garbage.text
    with httpx.Client(base_url=server) as browser:
        page = browser.get("/-/login")
        csrftoken = re.search(r'name="csrftoken" value="([^"]+)"', page.text).group(1)
        posted = browser.post(
            "/-/login",
            data={**form, "csrftoken": csrftoken},
            headers={"Sec-Fetch-Site": "cross-site"},
        )
        assert posted.status_code == 403


def test_a_new_password_or_lost_admin_flag_ends_sessions_at_once(site: Site, server: str) -> None:
    def run(*args: str, password: str) -> None:
        result = invoke_with_password(site.db_path, password, *args)
        assert result.exit_code == 0, result.output

    with httpx.Client(base_url=server) as browser:
        assert log_in(browser, EMAILS["Ops"], PASSWORDS["Ops"]).status_code == 302
        sql = "/llm-monitor.json?sql=select+count(*)+from+orgs"
        assert browser.get(sql).status_code == 200  # an admin's session
        with sqlite3.connect(site.db_path) as conn:
            conn.execute("update orgs set is_admin = 0 where name = 'Ops'")
        assert browser.get(sql).status_code == 403  # no longer an admin, still logged in
        assert browser.get("/llm-monitor/summary.json").status_code == 200
        run("orgs", "set-password", "Ops", "--admin", password="a-new-ops-password")
        assert browser.get("/llm-monitor/summary.json").status_code == 403  # logged out
        assert browser.get("/").headers["location"] == "/-/login?next=%2F"
    PASSWORDS["Ops"] = "a-new-ops-password"


def test_an_admin_bearer_token_reads_views_but_never_tables_or_sql(site: Site, server: str) -> None:
    token = json.loads(invoke(site.db_path, "dashboard-token", "create", "--org", "Ops", "--json"))[
        "token"
    ]
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{server}/llm-monitor/admin_orgs.json", headers=headers).status_code == 200
    for path in ["/llm-monitor.json?sql=select+1", "/llm-monitor/dashboard_tokens.json"]:
        assert httpx.get(f"{server}{path}", headers=headers).status_code == 403, path


def test_bearer_tokens_read_the_api_until_revoked(site: Site, server: str) -> None:
    created = json.loads(
        invoke(site.db_path, "dashboard-token", "create", "--org", "Globex", "--json")
    )
    token = created["token"]
    assert token.startswith("dash_")
    headers = {"Authorization": f"Bearer {token}"}
    summary = httpx.get(
        f"{server}/llm-monitor/summary.json?period=week&_shape=objects", headers=headers
    )
    assert summary.status_code == 200
    assert summary.json()["rows"] == site.view("summary", site.actor("Globex"), period="week")
    for view in ["timeline", "by_model"]:
        response = httpx.get(f"{server}/llm-monitor/{view}.json?_shape=array", headers=headers)
        assert response.json() == site.view(view, site.actor("Globex"))
    assert httpx.get(f"{server}/llm-monitor/usage.json", headers=headers).status_code == 403
    listed = json.loads(invoke(site.db_path, "dashboard-token", "list", "--json"))
    assert listed[-1]["prefix"] == token[:11] and listed[-1]["last_used_at"]
    assert token not in json.dumps(listed)
    invoke(site.db_path, "dashboard-token", "revoke", token)
    revoked = httpx.get(f"{server}/llm-monitor/summary.json", headers=headers)
    assert revoked.status_code == 401 and revoked.json()["error"] == "invalid token"
    # Neither a monitor token nor a made-up one opens the API: 401, "invalid token".
    for bad in [site.orgs["Globex"]["token"], "dash_" + "x" * 43, "dash_" + "x" * 500]:
        response = httpx.get(
            f"{server}/llm-monitor/summary.json", headers={"Authorization": f"Bearer {bad}"}
        )
        assert response.status_code == 401 and response.json()["error"] == "invalid token"
