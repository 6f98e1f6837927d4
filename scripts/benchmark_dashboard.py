"""How fast each dashboard view answers on a large database, as Datasette measures it.

Every view is asked through Datasette's own in-process client, as the busiest, a middling
and the quietest organisation (admin views as root), a few times each (the overview page
reads summary, month_spend, cost_series, by_family, by_token, by_user, unpriced and
recent_requests, each measured here); the table shows
Datasette's `query_ms`: the first answer (which may read a cold page cache from disk), then
the median and worst of the repeats, and the rows returned. Make the database with
`scripts/generate_usage_db.py` (5 million rows, 50 organisations, 90 days by default):

    python scripts/generate_usage_db.py /tmp/llm-monitor-5m.db
    python scripts/benchmark_dashboard.py /tmp/llm-monitor-5m.db
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
import statistics
from pathlib import Path

import click
from tabulate import tabulate

from llm_monitor.dashboard import make_datasette

LIMIT_MS = 200  # the target for every view


def cases(today: dt.date, rare_model: str) -> list[tuple[str, dict[str, str]]]:
    ninety = (today - dt.timedelta(days=89)).isoformat()
    thirty = (today - dt.timedelta(days=29)).isoformat()
    return [
        ("summary", {"period": "day"}),
        ("summary", {"period": "week"}),
        ("summary", {"period": "month"}),
        ("timeline", {"granularity": "day", "from": ninety}),
        ("timeline", {"granularity": "hour", "from": thirty}),
        ("by_model", {}),
        ("by_model", {"from": ninety}),
        ("by_token", {"from": ninety}),
        ("by_user", {"from": ninety}),
        ("by_tag", {"from": ninety}),
        ("by_tag", {"key": "feature", "from": ninety}),
        ("recent_requests", {}),
        ("recent_requests", {"model": rare_model}),
        ("recent_requests", {"status": "429"}),
        ("recent_errors", {}),
        ("recent_errors", {"model": rare_model}),
        ("my_tokens", {}),
        ("by_family", {}),
        ("by_family", {"from": ninety}),
        ("family_models", {"family": "gpt-4o-mini", "from": ninety}),
        ("cost_series", {"by": "provider"}),
        ("cost_series", {"by": "model", "from": ninety}),
        ("month_spend", {}),
        ("unpriced", {"from": ninety}),
        ("request", {"id": "1"}),
    ]


ADMIN_CASES = [("admin_orgs", {}), ("admin_unpriced_models", {})]


def pick_orgs(db_path: Path) -> dict[str, int]:
    with sqlite3.connect(db_path) as conn:
        sizes = conn.execute(
            "select org_id, sum(requests) from usage_daily group by org_id order by 2 desc"
        ).fetchall()
    return {
        "busiest": sizes[0][0],
        "median": sizes[len(sizes) // 2][0],
        "quietest": sizes[-1][0],
    }


def rarest_model(db_path: Path, org_id: int) -> str:
    with sqlite3.connect(db_path) as conn:
        return conn.execute(
            "select model from usage_daily where org_id = ? group by model "
            "order by sum(requests) limit 1",
            [org_id],
        ).fetchone()[0]


async def measure(db_path: Path, repeat: int) -> list[dict]:
    datasette = make_datasette(db_path)
    orgs = pick_orgs(db_path)
    today = dt.datetime.now(dt.UTC).date()
    runs = [
        (label, {"id": f"org:{org_id}", "org_id": org_id}, name, params)
        for label, org_id in orgs.items()
        for name, params in cases(today, rarest_model(db_path, org_id))
    ] + [("root", {"id": "root"}, name, params) for name, params in ADMIN_CASES]
    results = []
    for label, actor, name, params in runs:
        cookies = {"ds_actor": datasette.sign({"a": actor}, "actor")}
        timings, rows = [], 0
        for _ in range(repeat + 1):  # the first, from a cold page cache, is shown apart
            response = await datasette.client.get(
                f"/llm-monitor/{name}.json", params=params, cookies=cookies
            )
            body = response.json()
            if response.status_code != 200:
                raise click.ClickException(f"{name} {params}: {response.status_code} {body}")
            timings.append(body["query_ms"])
            rows = len(body["rows"])
        results.append(
            {
                "view": name,
                "params": " ".join(f"{k}={v}" for k, v in params.items()),
                "org": label,
                "rows": rows,
                "first_ms": round(timings[0], 1),
                "median_ms": round(statistics.median(timings[1:]), 1),
                "worst_ms": round(max(timings[1:]), 1),
            }
        )
    return results


@click.command()
@click.argument("db_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--repeat", default=5, show_default=True, help="Times each view is asked after the first."
)
@click.option(
    "--json-out", type=click.Path(dir_okay=False, path_type=Path), help="Also write JSON here."
)
def main(db_path: Path, repeat: int, json_out: Path | None) -> None:
    """Print each dashboard view's query time (Datasette's query_ms) on DB_PATH."""
    with sqlite3.connect(db_path) as conn:
        usage_rows = conn.execute("select count(*) from usage").fetchone()[0]
        org_count = conn.execute("select count(*) from orgs").fetchone()[0]
    results = asyncio.run(measure(db_path, repeat))
    click.echo(f"{db_path}: {usage_rows:,} usage rows, {org_count} organisations\n")
    click.echo(tabulate(results, headers="keys"))
    worst = max(results, key=lambda r: r["worst_ms"])
    click.echo(
        f"\nslowest: {worst['view']} {worst['params']} ({worst['org']}) {worst['worst_ms']} ms; "
        f"{sum(r['worst_ms'] >= LIMIT_MS for r in results)} of {len(results)} at or over "
        f"{LIMIT_MS} ms"
    )
    if json_out:
        json_out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
