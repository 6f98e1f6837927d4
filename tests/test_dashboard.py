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
import pytest
import yaml

from llm_monitor.dashboard import CONFIG_DIR, make_datasette
from llm_monitor.store.recorder import Recorder
from llm_monitor.store.rollups import latency_le
from llm_monitor.usage import UsageRecord, utc_timestamp
from tests.conftest import invoke, invoke_with_password
from tests.proxy import running_dashboard

PASSWORDS = {"Acme": "acme-password-1", "Globex": "globex-password-2", "Ops": "ops-password-3"}
EMAILS = {"Acme": "finance@acme.example", "Globex": "it@globex.example", "Ops": "ops@x.example"}
ORG_VIEWS = [
    "summary",
    "timeline",
    "by_model",
    "by_token",
    "by_user",
    "by_tag",
    "recent_requests",
    "recent_errors",
    "my_tokens",
]
ADMIN_VIEWS = ["admin_orgs", "admin_unpriced_models"]
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
        lambda r: [(r["provider"], r["model"])],
    )
    assert {(r["provider"], r["model"]): r["unpriced_requests"] for r in unpriced} == {
        key: len(rows) for key, rows in expected.items()
    }
    mystery = next(r for r in unpriced if r["model"] == "mystery-model")
    assert mystery["orgs"] == 3 and mystery["unpriced_requests"] > 0


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


def test_every_query_is_guarded_and_charts_its_own_columns(site: Site) -> None:
    queries = yaml.safe_load((CONFIG_DIR / "metadata.yml").read_text())["databases"]["llm-monitor"][
        "queries"
    ]
    assert set(queries) == set(ORG_VIEWS + ADMIN_VIEWS)
    for name, query in queries.items():
        actor = {"id": "root"} if name in ADMIN_VIEWS else site.actor("Acme")
        assert query["allow"] in ({"org_id": "*"}, {"id": "root", "admin": True}), name
        if ":_actor_org_id" in query["sql"]:
            assert query["allow"] == {"org_id": "*"}, name
        columns = site.get(f"/llm-monitor/{name}.json", actor).json()["columns"]
        chart = dict(part.split("=") for part in query["fragment"].split("&"))
        assert chart["g.x_column"] in columns and chart["g.y_column"] in columns, name
        page = site.get(f"/llm-monitor/{name}", actor)
        assert page.status_code == 200
        assert f"history.replaceState(null, '', \"#{query['fragment']}\")" in page.text
        assert "datasette_vega" in page.text  # the chart's script is on the page
        csv = site.get(f"/llm-monitor/{name}.csv", actor)
        assert csv.status_code == 200 and csv.text.splitlines()[0] == ",".join(columns)


def test_landing_page_shows_the_overview_and_links_every_view(site: Site) -> None:
    page = site.get("/", site.actor("Acme")).text
    usage = site.usage(site.org_ids["Acme"])
    since = time.strftime("%Y-%m-%dT%H", time.gmtime(site.now - 719 * 3600))
    thirty_days = [r for r in usage if r["ts"][:13] >= since]
    assert f"<td>Last 30 days</td><td>{len(thirty_days):,}</td>" in page
    for view in ORG_VIEWS:
        assert f'href="/llm-monitor/{view}#g.' in page, view
    assert "admin_orgs" not in page
    assert "admin_orgs" in site.get("/", site.actor("Ops")).text


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
    ],
)
def test_bad_parameters_get_a_clear_400(site: Site, view: str, params: dict, message: str) -> None:
    response = site.get(f"/llm-monitor/{view}.json", site.actor("Acme"), params=params)
    assert response.status_code == 400
    assert message in response.json()["error"]
    page = site.get(f"/llm-monitor/{view}", site.actor("Acme"), params=params)
    assert page.status_code == 400 and message in page.text
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


def log_in(
    browser: httpx.Client, email: str, password: str, next_path: str = "/"
) -> httpx.Response:
    form = browser.get("/-/login", params={"next": next_path})
    csrftoken = re.search(r'name="csrftoken" value="([^"]+)"', form.text).group(1)
    return browser.post(
        "/-/login",
        data={"email": email, "password": password, "next": next_path, "csrftoken": csrftoken},
    )


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
    assert revoked.status_code == 403
    # Neither a monitor token nor a made-up one opens the API.
    for bad in [site.orgs["Globex"]["token"], "dash_" + "x" * 43, "dash_" + "x" * 500]:
        response = httpx.get(
            f"{server}/llm-monitor/summary.json", headers={"Authorization": f"Bearer {bad}"}
        )
        assert response.status_code == 403
