"""Anthropic's Admin API: the messages usage report and the cost report (an admin key,
`sk-ant-admin01-...`).

Traps handled here:
- Headers `x-api-key` and `anthropic-version: 2023-06-01`; `starting_at`/`ending_at` in
  RFC 3339; arrays as `group_by[]`.
- Usage splits input into `uncached_input_tokens`, `cache_read_input_tokens` and
  `cache_creation.ephemeral_5m_input_tokens`/`ephemeral_1h_input_tokens`; the table's
  `input_tokens` is their sum, as the proxy's is. The report has no request count.
- The cost report's `amount` is a decimal string in **cents**; it cannot be grouped by key,
  only by workspace and description (model, token type). Priority-tier spend never
  appears in it.
- Workbench usage has a null key; the default workspace is null.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlite_utils import Database

from llm_monitor.billing import ledger
from llm_monitor.billing.feeds import ImportReport, ProgressFactory, run_feeds
from llm_monitor.billing.http import ApiClient, ApiError, paged
from llm_monitor.billing.openai import add, count

DEFAULT_BASE_URL = "https://api.anthropic.com"
KEY_ENV = "ANTHROPIC_ADMIN_KEY"
VERSION = "2023-06-01"
PAGE_DAYS = 31
CENTS = Decimal(100)


def client(key: str, base_url: str = DEFAULT_BASE_URL) -> ApiClient:
    return ApiClient("anthropic", base_url, {"x-api-key": key, "anthropic-version": VERSION})


def rfc3339(day: dt.date) -> str:
    return f"{day.isoformat()}T00:00:00Z"


def bucket_day(bucket: dict[str, Any]) -> dt.date:
    start = bucket.get("starting_at")
    try:
        return (
            dt.datetime.fromisoformat(str(start).replace("Z", "+00:00")).astimezone(dt.UTC).date()
        )
    except ValueError:
        raise ApiError(f"anthropic: a bucket without a starting_at: {str(bucket)[:200]}") from None


def usage_row(item: dict[str, Any]) -> ledger.UsageRow:
    split = item.get("cache_creation") if isinstance(item.get("cache_creation"), dict) else {}
    five, hour = (
        count(split.get("ephemeral_5m_input_tokens")),
        count(split.get("ephemeral_1h_input_tokens")),
    )
    uncached, read = (
        count(item.get("uncached_input_tokens")),
        count(item.get("cache_read_input_tokens")),
    )
    tools = item.get("server_tool_use") if isinstance(item.get("server_tool_use"), dict) else {}
    writes = add(five, hour)
    return ledger.UsageRow(
        provider="anthropic",
        model_raw=item.get("model"),
        kind="messages",
        api_key_id=item.get("api_key_id"),
        project_id=item.get("workspace_id"),
        input_tokens=add(uncached, read, writes),
        cached_input_tokens=read,
        cache_write_tokens=writes,
        cache_write_1h_tokens=hour,
        output_tokens=count(item.get("output_tokens")),
        web_search_requests=count(tools.get("web_search_requests")),
        raw=item,
    )


def cents_to_usd(value: Any, where: str) -> Decimal:
    try:
        cents = Decimal(str(value))
    except InvalidOperation:
        raise ApiError(f"anthropic: {where}: amount {value!r} is not a number") from None
    if value is None or isinstance(value, bool) or not cents.is_finite():
        raise ApiError(f"anthropic: {where}: amount {value!r} is not a number")
    return cents / CENTS


def cost_row(item: dict[str, Any], day: dt.date) -> ledger.CostRow:
    currency = str(item.get("currency") or "USD").upper()
    if currency != "USD":
        raise ApiError(f"anthropic: cost of {day}: amount in {currency}, only USD is read")
    return ledger.CostRow(
        provider="anthropic",
        model_raw=item.get("model"),
        amount_usd=cents_to_usd(item.get("amount"), f"cost of {day}"),
        line_item=item.get("description") or item.get("cost_type"),
        token_type=item.get("token_type"),
        project_id=item.get("workspace_id"),
        raw=item,
    )


@dataclass(frozen=True)
class UsageFeed:
    name: str = "anthropic:usage_report/messages"

    def pages(
        self, client: ApiClient, start: dt.date, end: dt.date
    ) -> Iterator[list[ledger.Bucket]]:
        params = {
            "starting_at": rfc3339(start),
            "ending_at": rfc3339(end),
            "bucket_width": "1d",
            "group_by[]": ["model", "api_key_id", "workspace_id"],
            "limit": PAGE_DAYS,
        }
        for buckets in paged(client, "/v1/organizations/usage_report/messages", params):
            yield [
                ledger.Bucket(bucket_day(b), usage=[usage_row(r) for r in b.get("results") or []])
                for b in buckets
            ]


@dataclass(frozen=True)
class CostFeed:
    name: str = "anthropic:cost_report"

    def pages(
        self, client: ApiClient, start: dt.date, end: dt.date
    ) -> Iterator[list[ledger.Bucket]]:
        params = {
            "starting_at": rfc3339(start),
            "ending_at": rfc3339(end),
            "bucket_width": "1d",
            "group_by[]": ["workspace_id", "description"],
            "limit": PAGE_DAYS,
        }
        for buckets in paged(client, "/v1/organizations/cost_report", params):
            page = []
            for b in buckets:
                day = bucket_day(b)
                page.append(
                    ledger.Bucket(day, costs=[cost_row(r, day) for r in b.get("results") or []])
                )
            yield page


def fetch_keys(client: ApiClient) -> list[ledger.ProviderKey]:
    """The organisation's API keys with their `partial_key_hint`."""
    keys, after = [], None
    while True:
        data = client.get(
            "/v1/organizations/api_keys", {"limit": 100, **({"after_id": after} if after else {})}
        )
        items = [i for i in data.get("data") or [] if isinstance(i, dict)]
        keys += [
            ledger.ProviderKey(
                i["id"], i.get("name"), i.get("partial_key_hint"), i.get("workspace_id")
            )
            for i in items
            if i.get("id")
        ]
        after = data.get("last_id") or (items[-1].get("id") if items else None)
        if not data.get("has_more") or not after:
            return keys


def import_anthropic(
    db: Database,
    key: str,
    *,
    base_url: str = DEFAULT_BASE_URL,
    since: dt.date | None = None,
    today: dt.date | None = None,
    progress: ProgressFactory | None = None,
) -> ImportReport:
    today = today or ledger.utc_today()
    with client(key, base_url) as api:
        fetched = fetch_keys(api)
        with db.atomic():
            keys = ledger.store_keys(db, "anthropic", fetched)
        results = run_feeds(
            db, api, [UsageFeed(), CostFeed()], since=since, today=today, progress=progress
        )
    return ImportReport("anthropic", keys, results)
