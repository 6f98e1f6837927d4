"""A stand-in for the providers' admin APIs (OpenAI organisation usage and costs, Anthropic
usage and cost reports, xAI's management usage), built from their documented shapes and
strict about what they require, on 127.0.0.1 and a free port.

Tests fill it with figures per day; it pages them (a few days a page, `has_more` and
`next_page`), answers empty days with empty buckets, sends amounts as strings where the
providers do, Anthropic's in cents, and can answer a path's first request with a 429 and
`Retry-After`, or hold a page until released (to kill an import halfway).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.replay import QuietHandler, StandInServer

DAY = 86400


def day_of(ts: int) -> dt.date:
    return dt.datetime.fromtimestamp(ts, dt.UTC).date()


def unix(day: dt.date) -> int:
    return int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp())


@dataclass
class Seen:
    at: float
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class Figures:
    """What the stand-in serves; each dict is keyed by day."""

    openai_usage: dict[str, dict[dt.date, list[dict]]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    openai_costs: dict[dt.date, list[dict]] = field(default_factory=dict)
    openai_projects: dict[str, list[dict]] = field(default_factory=dict)  # id -> keys
    anthropic_usage: dict[dt.date, list[dict]] = field(default_factory=dict)
    anthropic_costs: dict[dt.date, list[dict]] = field(default_factory=dict)
    anthropic_keys: list[dict] = field(default_factory=list)
    xai_usage: dict[dt.date, dict[str, Any]] = field(default_factory=dict)  # model -> usd


class _Handler(QuietHandler):
    server: BillingStandIn

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": {"message": message, "type": "invalid_request_error"}})

    def _handle(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        seen = Seen(
            time.monotonic(),
            self.command,
            url.path,
            parse_qs(url.query),
            {k.lower(): v for k, v in self.headers.items()},
            body,
        )
        server = self.server
        with server.lock:
            server.seen.append(seen)
            if url.path in server.rate_limit_once:
                server.rate_limit_once.discard(url.path)
                self._send(429, {"error": {"message": "rate limited"}}, {"retry-after": "1"})
                return
        hold = server.hold_at
        if hold is not None and hold[0] == url.path and seen.query.get("page") == [hold[1]]:
            server.held.set()
            server.release.wait(30)
        try:
            status, answer = server.route(seen)
        except AssertionError as e:  # the importer broke a documented rule
            status, answer = 400, {"error": {"message": f"stand-in: {e}"}}
        self._send(status, answer)

    do_GET = do_POST = _handle


class BillingStandIn(StandInServer):
    def __init__(self, keys: dict[str, str], page_days: int = 2) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.keys = keys  # provider -> the admin key it accepts
        self.page_days = page_days
        self.figures = Figures()
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.rate_limit_once: set[str] = set()
        self.hold_at: tuple[str, str] | None = None  # (path, page token) to hold
        self.held = threading.Event()
        self.release = threading.Event()
        self.missing_paths = {"/v1/organization/usage/web_search_calls"}  # answers 404
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> BillingStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()

    # Routing.

    def route(self, seen: Seen) -> tuple[int, Any]:
        path = seen.path
        if path in self.missing_paths:
            return 404, {"error": {"message": f"Invalid URL (GET {path})"}}
        if path.startswith("/v1/organization/"):
            if seen.headers.get("authorization") != f"Bearer {self.keys['openai']}":
                return 401, {"error": {"message": "Incorrect API key provided"}}
            return 200, self.openai(seen)
        if path.startswith("/v1/organizations/"):
            if seen.headers.get("x-api-key") != self.keys["anthropic"]:
                return 401, {"type": "error", "error": {"type": "authentication_error"}}
            assert seen.headers.get("anthropic-version") == "2023-06-01", "anthropic-version"
            return 200, self.anthropic(seen)
        if path.startswith("/v1/billing/teams/"):
            if seen.headers.get("authorization") != f"Bearer {self.keys['xai']}":
                return 401, {"error": "unauthenticated"}
            return 200, self.xai(seen)
        return 404, {"error": {"message": f"no route {path}"}}

    def _page(self, days: list[dt.date], seen: Seen, make: Any) -> dict[str, Any]:
        first = int(seen.query.get("page", ["page_0"])[0].removeprefix("page_"))
        chunk = days[first : first + self.page_days]
        more = first + self.page_days < len(days)
        return {
            "object": "page",
            "data": [make(day) for day in chunk],
            "has_more": more,
            "next_page": f"page_{first + self.page_days}" if more else None,
        }

    def openai(self, seen: Seen) -> dict[str, Any]:
        q = seen.query
        path = seen.path
        if path == "/v1/organization/projects":
            data = [
                {"id": p, "object": "organization.project", "name": p}
                for p in self.figures.openai_projects
            ]
            return {
                "object": "list",
                "data": data,
                "has_more": False,
                "last_id": data[-1]["id"] if data else None,
            }
        if path.startswith("/v1/organization/projects/") and path.endswith("/api_keys"):
            project = path.split("/")[4]
            keys = self.figures.openai_projects.get(project, [])
            # One key a page, to exercise `after`.
            after = q.get("after", [None])[0]
            start = next((i + 1 for i, k in enumerate(keys) if k["id"] == after), 0)
            chunk = keys[start : start + 1]
            return {
                "object": "list",
                "data": [{"object": "organization.project.api_key", **k} for k in chunk],
                "has_more": start + 1 < len(keys),
                "first_id": chunk[0]["id"] if chunk else None,
                "last_id": chunk[-1]["id"] if chunk else None,
            }
        assert q.get("bucket_width") == ["1d"], "bucket_width=1d"
        start, end = int(q["start_time"][0]), int(q["end_time"][0])
        assert start % DAY == 0, "start_time must be aligned to UTC midnight"
        days = [day_of(t) for t in range(start, end, DAY)]
        if path == "/v1/organization/costs":
            assert set(q["group_by"]) == {"line_item", "project_id", "api_key_id"}, q["group_by"]

            def cost_bucket(day: dt.date) -> dict[str, Any]:
                results = [
                    {"object": "organization.costs.result", **r}
                    for r in self.figures.openai_costs.get(day, [])
                ]
                return {
                    "object": "bucket",
                    "start_time": unix(day),
                    "end_time": unix(day) + DAY,
                    "results": results,
                }

            return self._page(days, seen, cost_bucket)
        kind = path.rsplit("/", 1)[1]
        assert "model" in q.get("group_by", []) or kind in {
            "vector_stores",
            "code_interpreter_sessions",
        }, "group_by"
        figures = self.figures.openai_usage.get(kind, {})
        # Some versions of the spec name the array `result`: the embeddings answer so.
        array = "result" if kind == "embeddings" else "results"

        def usage_bucket(day: dt.date) -> dict[str, Any]:
            results = [
                {"object": f"organization.usage.{kind}.result", **r} for r in figures.get(day, [])
            ]
            return {
                "object": "bucket",
                "start_time": unix(day),
                "end_time": unix(day) + DAY,
                array: results,
            }

        return self._page(days, seen, usage_bucket)

    def anthropic(self, seen: Seen) -> dict[str, Any]:
        q = seen.query
        if seen.path == "/v1/organizations/api_keys":
            return {
                "data": self.figures.anthropic_keys,
                "has_more": False,
                "first_id": None,
                "last_id": None,
            }
        start = dt.datetime.fromisoformat(q["starting_at"][0].replace("Z", "+00:00"))
        end = dt.datetime.fromisoformat(q["ending_at"][0].replace("Z", "+00:00"))
        days = []
        day = start.date()
        while day < end.date():
            days.append(day)
            day += dt.timedelta(days=1)

        def bucket(figures: dict[dt.date, list[dict]]) -> Any:
            def make(day: dt.date) -> dict[str, Any]:
                return {
                    "starting_at": f"{day.isoformat()}T00:00:00Z",
                    "ending_at": f"{(day + dt.timedelta(days=1)).isoformat()}T00:00:00Z",
                    "results": figures.get(day, []),
                }

            return make

        if seen.path == "/v1/organizations/usage_report/messages":
            assert set(q["group_by[]"]) == {"model", "api_key_id", "workspace_id"}, "group_by[]"
            return self._page(days, seen, bucket(self.figures.anthropic_usage))
        assert seen.path == "/v1/organizations/cost_report", seen.path
        assert set(q["group_by[]"]) == {"workspace_id", "description"}, "group_by[]"
        return self._page(days, seen, bucket(self.figures.anthropic_costs))

    def xai(self, seen: Seen) -> dict[str, Any]:
        request = seen.body["analyticsRequest"]
        assert request["timeUnit"] == "TIME_UNIT_DAY"
        assert request["values"] == [{"name": "usd", "aggregation": "AGGREGATION_SUM"}]
        start = dt.date.fromisoformat(request["timeRange"]["startTime"][:10])
        end = dt.date.fromisoformat(request["timeRange"]["endTime"][:10])
        series: dict[str, list[dict]] = defaultdict(list)
        for day, models in sorted(self.figures.xai_usage.items()):
            if start <= day < end:
                for model, usd in models.items():
                    series[model].append(
                        {"timestamp": f"{day.isoformat()}T00:00:00Z", "values": [usd]}
                    )
        return {
            "timeSeries": [
                {"group": [model], "groupLabels": [model], "dataPoints": points}
                for model, points in series.items()
            ],
            "limitReached": False,
        }
