"""Reports over usage rows that the CLI prints (the dashboard's views are canned queries in
`datasette_config/metadata.yml`, over the rollups)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlite_utils import Database

from llm_monitor.errors import NotFound
from llm_monitor.money.costs import (
    PER_TOKEN,
    Unpriced,
    breakdown,
    load_price_book,
    tier_variant,
    units_of,
    when_of,
)
from llm_monitor.store.database import SHOWN_MODEL
from llm_monitor.usage import UsageRecord


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
    """Models seen in traffic that have no price at all, most requests first. Rows whose
    usage was never seen (a client that hung up) or that lack one rate are not here:
    `pricing check` lists those too."""
    return list(
        db.query(f"""
        select provider, {SHOWN_MODEL} as model, count(*) as requests,
          sum(input_tokens) as input_tokens, sum(output_tokens) as output_tokens,
          min(ts) as first_seen, max(ts) as last_seen
        from usage where unpriced_reason = 'no_price' group by 1, 2 order by requests desc
    """)
    )


def pricing_gaps(db: Database, since: str) -> list[dict[str, Any]]:
    """Models seen since `since` that were not priced from their own price: no price, a
    missing rate or tier, or priced as their family (fallback); with what is at stake."""
    return list(
        db.query(
            f"""
        select provider, {SHOWN_MODEL} as model,
          case when priced = 1 then substr(cost_basis, 1, instr(cost_basis, ' ') - 1)
            else unpriced_reason end as problem,
          count(*) as requests, sum(input_tokens) as input_tokens,
          sum(output_tokens) as output_tokens, round(sum(cost_usd), 6) as cost_usd,
          min(ts) as first_seen, max(ts) as last_seen
        from usage
        where ts >= ? and ((priced = 0 and unpriced_reason != 'usage_unseen')
          or cost_basis like 'fallback:%')
        group by 1, 2, 3 order by requests desc
    """,
            [since],
        )
    )


@dataclass(frozen=True)
class Explanation:
    row: dict[str, Any]
    lines: list[str]


def explain_row(db: Database, row_id: int) -> Explanation:
    """How the row's cost was reached: each unit's count and rate with the price in force
    for it, or why it has no cost; and whether repricing today would change it."""
    rows = list(db.query("select * from usage where id = ?", [row_id]))
    if not rows:
        raise NotFound(f"no usage row with id {row_id}")
    row = rows[0]
    record = UsageRecord.model_validate({k: row[k] for k in UsageRecord.model_fields})
    model = record.billed_model
    out = [
        f"row {row_id}: {row['provider']} {row['method']} {row['path']} at {row['ts']}",
        f"model: {model or '(none)'}"
        + (f" (asked for {record.model})" if record.model and record.model != model else "")
        + (f", service tier {record.service_tier}" if record.service_tier else ""),
    ]
    if row["priced"] is None:
        out.append("nothing to bill: " + _why_not_billed(record))
        return Explanation(row, out)
    if row["cost_basis"] == "provider_reported":
        out.append(f"cost: ${row['cost_usd']} as stated by the provider (usage.cost)")
        return Explanation(row, out)
    if row["priced"] == 0:
        out.append(f"no cost: {row['unpriced_reason']}: {_reason_text(row['unpriced_reason'])}")
    else:
        out.append(f"price: {row['cost_basis']}")
    book = load_price_book(db)
    try:
        if not record.has_usage or not model:
            raise Unpriced(row["unpriced_reason"] or "no_price")
        quote = book.quote(
            record.provider,
            model,
            when_of(record.ts),
            record.input_tokens,
            tier_variant(record.service_tier),
        )
        if row["priced"] == 0:
            rates = ", ".join(f"{k} {v}" for k, v in quote.rates.items())
            out.append(f"the price in force: {quote.basis}, with rates for: {rates}")
        lines = breakdown(quote.rates, **units_of(record))
    except Unpriced as e:
        if row["priced"] == 1:
            out.append(f"with today's prices it would have no cost ({e.reason})")
        return Explanation(row, out)
    for entry in (quote.entry, quote.variant):
        if entry is not None:
            out.append(f"  source: {entry.source}")
    total = Decimal(0)
    for line in lines:
        per = "1M" if line.per == PER_TOKEN else f"{line.per:,}"
        out.append(
            f"  {_KIND_TEXT.get(line.kind, line.kind):<28} {line.count:>12,} x ${line.rate} / {per}"
            f" = ${_plain(line.amount)}"
        )
        total += line.amount
    out.append(f"  {'total':<28} {'':>12}   ${_plain(total)}")
    stored = row["cost_usd"]
    if row["priced"] == 1 and quote.basis == row["cost_basis"] and float(total) == stored:
        out.append(f"stored cost_usd: {stored} (as computed above)")
    elif row["priced"] == 1:
        out.append(
            f"stored cost_usd: {stored} from {row['cost_basis']}; the prices have changed since: "
            f"`llm-monitor pricing reprice` would store {float(total)} ({quote.basis})"
        )
    else:
        out.append(f"with today's prices `pricing reprice` would store {float(total)}")
    return Explanation(row, out)


def _plain(amount: Decimal) -> str:
    return format(amount.normalize(), "f") if amount else "0"


_KIND_TEXT = {
    "input": "input (uncached)",
    "cached_input": "cached input",
    "cache_write": "cache writes (5 min)",
    "cache_write_1h": "cache writes (1 hour)",
    "output": "output",
    "reasoning": "reasoning",
    "input_audio": "audio input",
    "output_audio": "audio output",
    "input_image": "image input",
    "output_image": "image output",
    "web_search_per_1k": "web searches",
    "code_execution_per_1k": "code executions",
    "file_search_per_1k": "file searches",
    "maps_grounding_per_1k": "Maps-grounded prompts",
    "web_search_preview_per_1k": "web searches (web_search_preview)",
}


def _reason_text(reason: str | None) -> str:
    if reason == "no_price":
        return "no price matches this model (see `llm-monitor pricing check`)"
    if reason == "usage_unseen":
        return "the provider may have billed it, but its usage was never seen"
    if reason == "inconsistent_usage":
        return "the usage figures contradict each other (a part larger than its whole)"
    if reason and reason.startswith("missing_rate:"):
        return f"the price has no rate for {reason.split(':', 1)[1]}, which this request used"
    if reason and reason.startswith("uncounted_unit:"):
        units = reason.split(":", 1)[1].replace(",", ", ")
        return f"the model is priced by {units}, which the proxy does not count"
    return "unknown"


def _why_not_billed(record: UsageRecord) -> str:
    if not record.billable:
        return "the provider does not charge for this call"
    if record.status is not None and record.status >= 300:
        return f"the provider answered {record.status}"
    if record.status is None:
        return "no answer from the provider"
    return "no model named"
