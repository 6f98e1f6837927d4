"""The dashboard's pages: the landing page's numbers, default charts and parameter checks."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from urllib.parse import parse_qs

from datasette import hookimpl
from datasette.app import Datasette
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


@hookimpl
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


@hookimpl
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


def _is_date(value: str) -> bool:
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return len(value) == 10


def parameter_error(datasette: Datasette, args: dict[str, list[str]]) -> str | None:
    """Why the query string's parameters cannot be answered, or None when they can."""
    config = datasette.plugin_config("llm-monitor") or {}
    for name, allowed in (config.get("params") or {}).items():
        value = (args.get(name) or [""])[0]
        if value and value not in allowed:
            return f"{name} must be one of {', '.join(allowed)}; got {value[:40]!r}"
    status = (args.get("status") or [""])[0]
    if status and not (status.isdigit() and len(status) == 3):
        return f"status must be an HTTP status such as 429; got {status[:40]!r}"
    dates = {}
    for name in ("from", "to"):
        value = (args.get(name) or [""])[0]
        if value and not _is_date(value):
            return f"{name} must be a date as YYYY-MM-DD; got {value[:40]!r}"
        dates[name] = value
    if dates["from"] and dates["to"] and dates["from"] > dates["to"]:
        return f"from ({dates['from']}) is after to ({dates['to']})"
    return None


@hookimpl
def asgi_wrapper(datasette: Datasette) -> Any:
    """Refuse bad parameters of the canned queries with a 400 that says what is wrong,
    instead of an empty or silently defaulted answer."""

    def wrap(app: Any) -> Any:
        async def checked(scope: dict, receive: Any, send: Any) -> None:
            path = scope.get("path", "")
            if scope["type"] == "http" and path.startswith(f"/{usage_db(datasette).name}/"):
                args = parse_qs(scope.get("query_string", b"").decode("latin-1"))
                error = parameter_error(datasette, args)
                if error is not None:
                    await _send_error(send, error, json_wanted=".json" in path)
                    return
            await app(scope, receive, send)

        return checked

    return wrap


async def _send_error(send: Any, message: str, json_wanted: bool) -> None:
    if json_wanted:
        body = json.dumps({"ok": False, "error": message, "status": 400}).encode()
        content_type = b"application/json; charset=utf-8"
    else:
        body = f"Bad request: {message}\n".encode()
        content_type = b"text/plain; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [(b"content-type", content_type), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})
