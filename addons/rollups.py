"""`usage_hourly`: usage summed per hour, organisation, token, provider and model.

Charts and summaries over months read this instead of rescanning `usage`. The recorder
adds each batch to it in the same transaction as the rows; a repricing or a migration
rebuilds the hours it touches from `usage` with `rebuild`, the same sums in SQL.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlite_utils import Database

KEY = ("hour", "org_id", "token_id", "provider", "model")
SUMS = (
    "requests",
    "errors",
    "streamed",
    "unpriced",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
    "latency_ms_sum",
    "latency_count",
    "ttft_ms_sum",
    "ttft_count",
)

# One row of `usage` as its contribution to the rollup; the SQL twin of `contribution`.
_CONTRIBUTION_SQL = """
    substr(ts, 1, 13) as hour, coalesce(org_id, 0) as org_id,
    coalesce(token_id, 0) as token_id, provider,
    coalesce(response_model, model, '') as model,
    count(*) as requests, sum(outcome != 'ok') as errors, sum(streamed) as streamed,
    sum(priced = 0) as unpriced, sum(coalesce(input_tokens, 0)) as input_tokens,
    sum(coalesce(cached_input_tokens, 0)) as cached_input_tokens,
    sum(coalesce(cache_write_tokens, 0)) as cache_write_tokens,
    sum(coalesce(output_tokens, 0)) as output_tokens,
    sum(coalesce(reasoning_tokens, 0)) as reasoning_tokens,
    sum(coalesce(cost_usd, 0)) as cost_usd,
    sum(coalesce(latency_ms, 0)) as latency_ms_sum, count(latency_ms) as latency_count,
    sum(coalesce(ttft_ms, 0)) as ttft_ms_sum, count(ttft_ms) as ttft_count
"""


def create(db: Database) -> None:
    db["usage_hourly"].create(
        {
            **{k: str for k in ("hour", "provider", "model")},
            "org_id": int,
            "token_id": int,
            **{
                s: (float if s in ("cost_usd", "latency_ms_sum", "ttft_ms_sum") else int)
                for s in SUMS
            },
        },
        pk=KEY,
        not_null=set(KEY),
    )
    db["usage_hourly"].create_index(["org_id", "hour"])


def contribution(row: dict[str, Any]) -> tuple[tuple[Any, ...], list[float | int]]:
    """What one `usage` row adds to its rollup row: the key and the sums."""
    key = (
        row["ts"][:13],
        row["org_id"] or 0,
        row["token_id"] or 0,
        row["provider"],
        row["response_model"] or row["model"] or "",
    )
    return key, [
        1,
        int(row["outcome"] != "ok"),
        int(bool(row["streamed"])),
        int(row["priced"] == 0),
        row["input_tokens"] or 0,
        row["cached_input_tokens"] or 0,
        row["cache_write_tokens"] or 0,
        row["output_tokens"] or 0,
        row["reasoning_tokens"] or 0,
        row["cost_usd"] or 0.0,
        row["latency_ms"] or 0.0,
        int(row["latency_ms"] is not None),
        row["ttft_ms"] or 0.0,
        int(row["ttft_ms"] is not None),
    ]


_UPSERT = (
    f"insert into usage_hourly ({', '.join(KEY + SUMS)}) "
    f"values ({', '.join('?' * (len(KEY) + len(SUMS)))}) "
    f"on conflict ({', '.join(KEY)}) do update set "
    + ", ".join(f"{s} = {s} + excluded.{s}" for s in SUMS)
)


def add(db: Database, rows: Iterable[dict[str, Any]]) -> None:
    """Add a batch of new `usage` rows (inside the caller's transaction)."""
    totals: dict[tuple[Any, ...], list[float | int]] = {}
    for row in rows:
        key, sums = contribution(row)
        if key in totals:
            totals[key] = [a + b for a, b in zip(totals[key], sums, strict=True)]
        else:
            totals[key] = sums
    db.conn.executemany(_UPSERT, [(*key, *sums) for key, sums in totals.items()])


def rebuild(db: Database, since_hour: str = "") -> None:
    """Recompute the rollup from `usage` for every hour from `since_hour` (all if empty)."""
    db.execute("delete from usage_hourly where hour >= ?", [since_hour])
    db.execute(
        f"insert into usage_hourly ({', '.join(KEY + SUMS)}) "
        f"select {_CONTRIBUTION_SQL} from usage where ts >= ? group by 1, 2, 3, 4, 5",
        [since_hour],
    )
