"""OpenAI's organisation Usage and Costs APIs (an admin key, `sk-admin-...`).

Traps handled here:
- `start_time`/`end_time` are Unix seconds, aligned to UTC midnight; buckets are 1d.
- Pages: `has_more` + `next_page`; a bucket's array is `results` (some specs: `result`),
  `[]` for an empty day (which still replaces what that day held).
- `amount.value` is a number or a JSON string: read as Decimal either way, never float.
- Usage and Costs may disagree: money comes from Costs; Usage gives the tokens.
- Costs' `line_item` is `MODEL, TOKEN TYPE` (`gpt-4o-2024-08-06, input`) for model spend.
- Key ids map to the keys' redacted values through the projects' key lists.
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

DEFAULT_BASE_URL = "https://api.openai.com"
KEY_ENV = "OPENAI_ADMIN_KEY"
PAGE_DAYS = 31  # the API's most 1d buckets per page
_KEYED = ("model", "api_key_id", "project_id")
# Usage endpoints and what each may be grouped by.
USAGE_ENDPOINTS: dict[str, tuple[str, ...]] = {
    "completions": _KEYED,
    "embeddings": _KEYED,
    "moderations": _KEYED,
    "images": _KEYED,
    "audio_speeches": _KEYED,
    "audio_transcriptions": _KEYED,
    "vector_stores": ("project_id",),
    "code_interpreter_sessions": ("project_id",),
    "web_search_calls": ("project_id",),
}


def client(key: str, base_url: str = DEFAULT_BASE_URL) -> ApiClient:
    return ApiClient("openai", base_url, {"Authorization": f"Bearer {key}"})


def unix(day: dt.date) -> int:
    return int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp())


def bucket_day(bucket: dict[str, Any]) -> dt.date:
    start = bucket.get("start_time")
    if isinstance(start, bool) or not isinstance(start, int | Decimal):
        raise ApiError(f"openai: a bucket without a start_time: {str(bucket)[:200]}")
    return dt.datetime.fromtimestamp(int(start), dt.UTC).date()


def results_of(bucket: dict[str, Any]) -> list[dict[str, Any]]:
    results = bucket.get("results", bucket.get("result")) or []
    return [r for r in results if isinstance(r, dict)]


def count(value: Any) -> int | None:
    """A count from the API: an int, or a whole number sent as a string or decimal."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return int(number) if number == number.to_integral_value() and number >= 0 else None


def add(*values: int | None) -> int | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def usage_row(kind: str, item: dict[str, Any]) -> ledger.UsageRow:
    """One usage result in the table's meaning: input includes cached tokens (as OpenAI's
    `input_tokens` does) and audio tokens (reported apart, as the proxy counts them in)."""
    return ledger.UsageRow(
        provider="openai",
        model_raw=item.get("model"),
        kind=kind,
        api_key_id=item.get("api_key_id"),
        project_id=item.get("project_id"),
        input_tokens=add(count(item.get("input_tokens")), count(item.get("input_audio_tokens"))),
        cached_input_tokens=count(item.get("input_cached_tokens")),
        cache_write_tokens=count(item.get("input_cache_write_tokens")),
        output_tokens=add(count(item.get("output_tokens")), count(item.get("output_audio_tokens"))),
        requests=count(item.get("num_model_requests")),
        raw=item,
    )


def parse_amount(value: Any, where: str) -> Decimal:
    """`amount.value`: a JSON number (already Decimal, parsed so) or a string."""
    if isinstance(value, bool) or value is None:
        raise ApiError(f"openai: {where}: no amount")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ApiError(f"openai: {where}: amount {value!r} is not a number") from None
    if not amount.is_finite():
        raise ApiError(f"openai: {where}: amount {value!r} is not a number")
    return amount


def split_line_item(line_item: str | None) -> tuple[str | None, str | None]:
    """`gpt-4o-2024-08-06, input` -> (model, token type); other items have no model."""
    if not line_item:
        return None, None
    model, sep, kind = line_item.partition(", ")
    return (model.strip(), kind.strip()) if sep else (None, None)


def cost_row(item: dict[str, Any], day: dt.date) -> ledger.CostRow:
    amount = item.get("amount") if isinstance(item.get("amount"), dict) else {}
    currency = str(amount.get("currency") or "usd").lower()
    if currency != "usd":
        raise ApiError(f"openai: costs of {day}: amount in {currency}, only USD is read")
    model, token_type = split_line_item(item.get("line_item"))
    return ledger.CostRow(
        provider="openai",
        model_raw=model,
        amount_usd=parse_amount(amount.get("value"), f"costs of {day}"),
        line_item=item.get("line_item"),
        token_type=token_type,
        api_key_id=item.get("api_key_id"),
        project_id=item.get("project_id"),
        raw=item,
    )


@dataclass(frozen=True)
class UsageFeed:
    kind: str

    @property
    def name(self) -> str:
        return f"openai:usage/{self.kind}"

    def pages(
        self, client: ApiClient, start: dt.date, end: dt.date
    ) -> Iterator[list[ledger.Bucket]]:
        params = {
            "start_time": unix(start),
            "end_time": unix(end),
            "bucket_width": "1d",
            "group_by": list(USAGE_ENDPOINTS[self.kind]),
            "limit": PAGE_DAYS,
        }
        for buckets in paged(client, f"/v1/organization/usage/{self.kind}", params):
            yield [
                ledger.Bucket(bucket_day(b), usage=[usage_row(self.kind, r) for r in results_of(b)])
                for b in buckets
            ]


@dataclass(frozen=True)
class CostsFeed:
    name: str = "openai:costs"

    def pages(
        self, client: ApiClient, start: dt.date, end: dt.date
    ) -> Iterator[list[ledger.Bucket]]:
        params = {
            "start_time": unix(start),
            "end_time": unix(end),
            "bucket_width": "1d",
            "group_by": ["line_item", "project_id", "api_key_id"],
            "limit": PAGE_DAYS,
        }
        for buckets in paged(client, "/v1/organization/costs", params):
            page = []
            for b in buckets:
                day = bucket_day(b)
                page.append(ledger.Bucket(day, costs=[cost_row(r, day) for r in results_of(b)]))
            yield page


def _listing(client: ApiClient, path: str) -> Iterator[dict[str, Any]]:
    after = None
    while True:
        data = client.get(path, {"limit": 100, **({"after": after} if after else {})})
        items = [i for i in data.get("data") or [] if isinstance(i, dict)]
        yield from items
        after = data.get("last_id") or (items[-1].get("id") if items else None)
        if not data.get("has_more") or not after:
            return


def fetch_keys(client: ApiClient) -> list[ledger.ProviderKey]:
    """Every project's API keys: id, name and the redacted value OpenAI shows."""
    keys = []
    for project in _listing(client, "/v1/organization/projects"):
        project_id = project.get("id")
        if not project_id:
            continue
        for key in _listing(client, f"/v1/organization/projects/{project_id}/api_keys"):
            if key.get("id"):
                keys.append(
                    ledger.ProviderKey(
                        key["id"], key.get("name"), key.get("redacted_value"), project_id
                    )
                )
    return keys


def import_openai(
    db: Database,
    key: str,
    *,
    base_url: str = DEFAULT_BASE_URL,
    since: dt.date | None = None,
    today: dt.date | None = None,
    progress: ProgressFactory | None = None,
    kinds: tuple[str, ...] = tuple(USAGE_ENDPOINTS),
) -> ImportReport:
    """The key list, then every usage endpoint and the costs, from `since` (or where the
    last import got to) to today."""
    today = today or ledger.utc_today()
    with client(key, base_url) as api:
        fetched = fetch_keys(api)
        with db.atomic():
            keys = ledger.store_keys(db, "openai", fetched)
        feeds = [UsageFeed(kind) for kind in kinds] + [CostsFeed()]
        results = run_feeds(db, api, feeds, since=since, today=today, progress=progress)
    return ImportReport("openai", keys, results)
