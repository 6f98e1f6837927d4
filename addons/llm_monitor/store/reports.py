"""Reports over usage rows that the CLI prints (the dashboard's views are canned queries in
`datasette_config/metadata.yml`, over the rollups)."""

from __future__ import annotations

from typing import Any

from sqlite_utils import Database


def usage_by_model(db: Database, since: str, org_id: int | None = None) -> list[dict[str, Any]]:
    """Requests, errors, tokens, cost and latency per model since `since` (UTC ISO-8601),
    costliest first; cost_usd sums priced requests only, `unpriced` counts the others."""
    where, params = "ts >= ?", [since]
    if org_id is not None:
        where += " and org_id = ?"
        params.append(org_id)
    return list(
        db.query(
            f"""
        select coalesce(response_model, model, '(none)') as model, count(*) as requests,
          sum(outcome != 'ok') as errors, sum(input_tokens) as input_tokens,
          sum(cached_input_tokens) as cached_tokens, sum(output_tokens) as output_tokens,
          sum(reasoning_tokens) as reasoning_tokens, round(sum(cost_usd), 6) as cost_usd,
          sum(priced = 0) as unpriced, round(avg(latency_ms), 1) as avg_latency_ms,
          round(avg(ttft_ms), 1) as avg_ttft_ms
        from usage where {where} group by 1 order by cost_usd desc nulls last, requests desc
    """,
            params,
        )
    )


def unpriced_models(db: Database) -> list[dict[str, Any]]:
    """Models seen in traffic whose cost could not be computed, most requests first."""
    return list(
        db.query("""
        select provider, coalesce(response_model, model) as model, count(*) as requests,
          sum(input_tokens) as input_tokens, sum(output_tokens) as output_tokens,
          min(ts) as first_seen, max(ts) as last_seen
        from usage where priced = 0 group by 1, 2 order by requests desc
    """)
    )
