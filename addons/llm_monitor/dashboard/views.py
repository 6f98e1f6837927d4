"""The dashboard's pages: the landing page's numbers, default charts and parameter checks; what
the hooks of `datasette_config/plugins/llm_monitor_views.py` do."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any
from urllib.parse import parse_qs

from datasette.app import Datasette
from datasette.utils import tilde_decode
from datasette.utils.asgi import Request

from llm_monitor.dashboard import is_admin, usage_db

OVERVIEW_SQL = """
with windows(position, name, start) as (
  values (1, 'Last 24 hours', strftime('%Y-%m-%dT%H', 'now', '-23 hours')),
         (2, 'Last 7 days', strftime('%Y-%m-%dT%H', 'now', '-167 hours')),
         (3, 'Last 30 days', strftime('%Y-%m-%dT%H', 'now', '-719 hours'))
)
select name, coalesce(sum(requests), 0) as requests,
  coalesce(sum(input_tokens), 0) as input_tokens,
  coalesce(sum(output_tokens), 0) as output_tokens,
  round(coalesce(sum(cost_usd), 0), 2) as cost_usd, coalesce(sum(errors), 0) as errors,
  coalesce(sum(unpriced), 0) as unpriced
from windows left join usage_hourly on org_id = :org_id and hour >= start
group by position order by position
"""


async def visible_views(datasette: Datasette, actor: dict[str, Any] | None) -> list[dict]:
    """Every canned query this actor may open, with its address and default chart."""
    database = usage_db(datasette).name
    views = []
    for name, query in (await datasette.get_canned_queries(database, actor)).items():
        if await datasette.permission_allowed(actor, "view-query", (database, name), True):
            fragment = f"#{query['fragment']}" if query.get("fragment") else ""
            views.append(
                {
                    "name": name,
                    "title": query.get("title", name),
                    "description": query.get("description", ""),
                    "url": datasette.urls.table(database, name) + fragment,
                }
            )
    return views


def extra_template_vars(template: str, request: Request, datasette: Datasette) -> Any:
    if template != "index.html" or request is None:
        return None

    async def landing() -> dict[str, Any]:
        actor = request.actor
        overview = []
        if actor and actor.get("org_id") is not None:
            result = await usage_db(datasette).execute(OVERVIEW_SQL, {"org_id": actor["org_id"]})
            overview = [dict(row) for row in result.rows]
        return {
            "overview": overview,
            "views": await visible_views(datasette, actor),
            "is_admin": is_admin(actor),
            "usage_database": usage_db(datasette).name,
        }

    return landing


def extra_body_script(
    template: str, database: str | None, request: Request, datasette: Datasette
) -> Any:
    """Open a canned query with its chart drawn: datasette-vega reads the chart from the
    address's fragment, so give the page its query's `fragment` when it has none."""
    if not template.startswith("query") or request is None or not database:
        return None
    name = request.url_vars.get("table")  # a canned query's name; none for ?sql=
    if not name:
        return None

    async def script() -> str:
        query = await datasette.get_canned_query(database, name, request.actor)
        if not query or not query.get("fragment"):
            return ""
        fragment = json.dumps("#" + query["fragment"])
        return f"if (!location.hash) history.replaceState(null, '', {fragment});"

    return script


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_STATUS = re.compile(r"[1-5]\d\d", re.ASCII)
_DIGITS = re.compile(r"\d{1,6}", re.ASCII)
DEFAULT_DAYS = 30  # `from` defaults to 29 days before `to`, which defaults to today (UTC)
MAX_BUCKETS = 1000  # Datasette's max_returned_rows: a timeline never comes back cut short


def _date(name: str, value: str) -> dt.date:
    try:
        if not _DATE.fullmatch(value):
            raise ValueError
        date = dt.date.fromisoformat(value)
        if not 1900 <= date.year <= 9998:
            raise ValueError
    except ValueError:
        raise ValueError(f"{name} must be a date as YYYY-MM-DD; got {value[:40]!r}") from None
    return date


def parameter_error(
    allowed_values: dict[str, list[str]], params: list[str], args: dict[str, list[str]]
) -> str | None:
    """Why a canned query cannot answer these arguments, or None when it can. Only the
    parameters the query declares are read."""
    values = {name: (args.get(name) or [""])[0] for name in params}
    timelimit = (args.get("_timelimit") or [""])[0]
    if timelimit and not _DIGITS.fullmatch(timelimit):
        return f"_timelimit must be a number of milliseconds; got {timelimit[:40]!r}"
    for name, value in values.items():
        if value and name in allowed_values and value not in allowed_values[name]:
            return f"{name} must be one of {', '.join(allowed_values[name])}; got {value[:40]!r}"
    if values.get("status") and not _STATUS.fullmatch(values["status"]):
        return f"status must be an HTTP status such as 429; got {values['status'][:40]!r}"
    if "from" not in values:
        return None
    try:
        stop = _date("to", values["to"]) if values.get("to") else dt.datetime.now(dt.UTC).date()
        start = (
            _date("from", values["from"])
            if values["from"]
            else stop - dt.timedelta(days=DEFAULT_DAYS - 1)
        )
    except ValueError as e:
        return str(e)
    if start > stop:
        return f"from ({start}) is after to ({stop})"
    if "granularity" in values:
        days = (stop - start).days + 1
        buckets = days * 24 if values["granularity"] == "hour" else days
        if buckets > MAX_BUCKETS:
            return (
                f"{buckets:,} {values['granularity'] or 'day'}s between {start} and {stop}: "
                f"a timeline has at most {MAX_BUCKETS:,} buckets (by hour, 41 days)"
            )
    return None


def canned_query_params(datasette: Datasette, path: str) -> list[str] | None:
    """The declared parameters of the usage database's canned query at `path`, or None
    when `path` is no such query (tables keep Datasette's own column filters)."""
    parts = path.strip("/").split("/")
    if len(parts) != 2:
        return None
    database, name = (tilde_decode(part) for part in parts)
    if database != usage_db(datasette).name:
        return None
    name = re.sub(r"\.(json|csv)$", "", name)
    query = (datasette.metadata("queries", database=database, fallback=False) or {}).get(name)
    return None if query is None else list(query.get("params") or [])


def asgi_wrapper(datasette: Datasette) -> Any:
    """Refuse bad parameters of the canned queries with a 400 that says what is wrong,
    instead of an empty or silently defaulted answer; they are read-only, so only GET."""

    def wrap(app: Any) -> Any:
        async def checked(scope: dict, receive: Any, send: Any) -> None:
            params = None
            if scope["type"] == "http":
                params = canned_query_params(datasette, scope.get("path", ""))
            if params is not None:
                json_wanted = scope["path"].endswith(".json")
                if scope["method"] not in ("GET", "HEAD"):
                    await _send_error(send, "views are read with GET", json_wanted, 405)
                    return
                allowed = (datasette.plugin_config("llm-monitor") or {}).get("params") or {}
                args = parse_qs(scope.get("query_string", b"").decode("latin-1"))
                error = parameter_error(allowed, params, args)
                if error is not None:
                    await _send_error(send, error, json_wanted, 400)
                    return
            await app(scope, receive, send)

        return checked

    return wrap


async def _send_error(send: Any, message: str, json_wanted: bool, status: int) -> None:
    if json_wanted:
        body = json.dumps({"ok": False, "error": message, "status": status}).encode()
        content_type = b"application/json; charset=utf-8"
    else:
        body = f"Bad request: {message}\n".encode()
        content_type = b"text/plain; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})
