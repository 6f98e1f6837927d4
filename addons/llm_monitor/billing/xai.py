"""xAI's management API: a team's historical usage in USD (a management key).

`POST /v1/billing/teams/{team_id}/usage` takes an `analyticsRequest` (a time range, a
time unit, the values to sum, what to group by) and answers time series. xAI documents
the request's fields but not the answer's exact shape; this reads
`timeSeries[].group` (the group's values, the model first) and
`timeSeries[].dataPoints[].{timestamp, values}`, values as numbers or strings, and warns
when `limitReached` says the answer was cut. There is no pagination: the range is asked
for in chunks of up to 31 days, each written (and resumable) on its own.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlite_utils import Database

from llm_monitor.billing import ledger
from llm_monitor.billing.feeds import ImportReport, ProgressFactory, run_feeds
from llm_monitor.billing.http import ApiClient, ApiError

DEFAULT_BASE_URL = "https://management-api.x.ai"
KEY_ENV = "XAI_MANAGEMENT_KEY"
CHUNK_DAYS = 31


def client(key: str, base_url: str = DEFAULT_BASE_URL) -> ApiClient:
    return ApiClient("xai", base_url, {"Authorization": f"Bearer {key}"})


def analytics_request(start: dt.date, end: dt.date) -> dict[str, Any]:
    return {
        "analyticsRequest": {
            "timeRange": {
                "startTime": f"{start.isoformat()} 00:00:00",
                "endTime": f"{end.isoformat()} 00:00:00",
                "timezone": "Etc/UTC",
            },
            "timeUnit": "TIME_UNIT_DAY",
            "values": [{"name": "usd", "aggregation": "AGGREGATION_SUM"}],
            "groupBy": ["model"],
            "filters": [],
        }
    }


def point_day(point: dict[str, Any]) -> dt.date:
    stamp = str(point.get("timestamp") or "")
    try:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(dt.UTC).date()
    except ValueError:
        raise ApiError(f"xai: a data point without a timestamp: {str(point)[:200]}") from None


def usd(value: Any) -> Decimal:
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ApiError(f"xai: usage value {value!r} is not a number") from None
    if value is None or isinstance(value, bool) or not amount.is_finite():
        raise ApiError(f"xai: usage value {value!r} is not a number")
    return amount


@dataclass
class UsageFeed:
    team_id: str
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"xai:usage/{self.team_id}"

    def pages(
        self, client: ApiClient, start: dt.date, end: dt.date
    ) -> Iterator[list[ledger.Bucket]]:
        chunk_start = start
        while chunk_start < end:
            chunk_end = min(chunk_start + dt.timedelta(days=CHUNK_DAYS), end)
            data = client.post(
                f"/v1/billing/teams/{self.team_id}/usage", analytics_request(chunk_start, chunk_end)
            )
            if data.get("limitReached"):
                self.warnings.append(
                    f"xai: usage from {chunk_start} to {chunk_end} was cut short by xAI "
                    "(limitReached): the figures are partial"
                )
            buckets = {
                day: ledger.Bucket(day) for day in ledger.days_between(chunk_start, chunk_end)
            }
            for series in data.get("timeSeries") or []:
                if not isinstance(series, dict):
                    continue
                group = series.get("group") or series.get("groupLabels") or []
                model = str(group[0]) if group else None
                for point in series.get("dataPoints") or []:
                    day = point_day(point)
                    values = point.get("values") or []
                    if day not in buckets or not values:
                        continue
                    buckets[day].costs.append(
                        ledger.CostRow(
                            provider="xai",
                            model_raw=model,
                            amount_usd=usd(values[0]),
                            line_item=model,
                            raw={"group": group, **point},
                        )
                    )
            yield list(buckets.values())
            chunk_start = chunk_end


def import_xai(
    db: Database,
    key: str,
    team_id: str,
    *,
    base_url: str = DEFAULT_BASE_URL,
    since: dt.date | None = None,
    today: dt.date | None = None,
    progress: ProgressFactory | None = None,
) -> ImportReport:
    today = today or ledger.utc_today()
    feed = UsageFeed(team_id)
    with client(key, base_url) as api:
        results = run_feeds(db, api, [feed], since=since, today=today, progress=progress)
    return ImportReport("xai", 0, results, tuple(feed.warnings))
