"""The dashboard's pages: what the hooks of `datasette_config/plugins/llm_monitor_views.py` do.

Every view is a canned query (its JSON and CSV are the API); its page is the template
`query-llm-monitor-<name>.html`, which extends `llm_monitor_view.html`: a title and what it
answers, a form (date pickers, drop-downs, presets), a chart drawn by our own script from
the page's rows, and the rows formatted (`formatting.py`). The landing page (`index.html`)
is an overview that reads the same canned queries' JSON every 15 seconds. Scripts and
styles are served from the package (`/-/llm-monitor/static/...`), never from a CDN.

A bad parameter is refused before the query runs: the API gets a 400 with the message, a
page is drawn again with the message beside its field (also a 400).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode

from datasette.app import Datasette
from datasette.utils import tilde_decode
from datasette.utils.asgi import Request, asgi_static

from llm_monitor.dashboard import CONFIG_DIR, DATABASE, formatting, is_admin, usage_db
from llm_monitor.money.costs import family_of

STATIC_DIR = CONFIG_DIR / "static"
STATIC_PATH = "/-/llm-monitor/static/"
REFRESH_SECONDS = 15  # the overview reads its numbers again this often


def model_family(model: str | None) -> str | None:
    """The model a name belongs to: a dated snapshot's family (as prices see it,
    `llm_monitor.money.costs.family_of`), an alias without its `-latest`, else the name.
    Requests that failed are recorded under the name asked for and answers under the
    snapshot that answered: this puts both under one model."""
    if model is None:
        return None
    family = family_of(model)
    if family:
        return family
    if model.endswith("-latest") and len(model) > len("-latest"):
        return model.removesuffix("-latest")
    return model


def prepare_connection(conn: sqlite3.Connection) -> None:
    conn.create_function("llm_monitor_family", 1, model_family, deterministic=True)


def prepare_jinja2_environment(env: Any) -> None:
    env.globals["lm_cell"] = formatting.cell
    env.globals["lm_label"] = formatting.label
    env.globals["lm_numeric"] = formatting.numeric
    env.globals["lm_records"] = records
    env.globals["lm_link"] = cell_link
    env.filters["usd"] = formatting.usd
    env.filters["count"] = formatting.count


def records(rows: list[Any], columns: list[str]) -> list[dict[str, Any]]:
    """A view's rows as objects, for its chart (as `?_shape=objects` gives them)."""
    return [dict(zip(columns, row, strict=True)) for row in rows]


def cell_link(query: str, column: str, row: Any, values: dict[str, str]) -> str | None:
    """Where a table cell leads: a request to its page, a model to its requests, a model
    family to its snapshots."""
    base = f"/{DATABASE}"
    keys = row.keys()
    if query in ("recent_requests", "recent_errors") and column in ("ts", "id") and "id" in keys:
        return f"{base}/request?id={row['id']}"
    if query == "by_family" and column == "family" and row["family"] is not None:
        args = {"family": row["family"], **{k: v for k, v in values.items() if v}}
        return f"{base}/family_models?{urlencode(args)}"
    if query in ("by_model", "family_models", "unpriced") and column == "model" and row["model"]:
        return f"{base}/recent_requests?{urlencode({'model': row['model']})}"
    return None


def register_routes() -> list[tuple[str, Any]]:
    # Only plain names of the static folder's files: no directories, nothing else.
    return [(r"^/-/llm-monitor/static/(?P<path>[a-z0-9-]+\.(?:css|js))$", asgi_static(STATIC_DIR))]


def extra_css_urls(template: str) -> list[str]:
    return [STATIC_PATH + "llm-monitor.css"]


def extra_js_urls(template: str) -> list[dict[str, Any]]:
    return [{"url": STATIC_PATH + "llm-monitor.js"}]


# The views in the navigation bar, in order: (query, label). Others (by_model,
# family_models, cost_series, month_spend, request) are reached from these.
NAV = [
    ("timeline", "Spend over time"),
    ("by_family", "Models"),
    ("by_token", "Services"),
    ("by_user", "Users"),
    ("by_tag", "Tags"),
    ("recent_requests", "Requests"),
    ("recent_errors", "Errors"),
    ("unpriced", "Unpriced"),
    ("budgets", "Budgets"),
    ("alerts", "Alerts"),
    ("summary", "Summary"),
    ("my_tokens", "Monitor tokens"),
    ("admin_orgs", "Organisations"),
    ("admin_unpriced_models", "Unpriced models"),
]


async def visible_views(datasette: Datasette, actor: dict[str, Any] | None) -> list[dict]:
    """Every canned query this actor may open, with its address."""
    database = usage_db(datasette).name
    views = []
    for name, query in (await datasette.get_canned_queries(database, actor)).items():
        if await datasette.permission_allowed(actor, "view-query", (database, name), True):
            views.append(
                {
                    "name": name,
                    "title": query.get("title", name),
                    "description": query.get("question") or query.get("description", ""),
                    "url": datasette.urls.table(database, name),
                }
            )
    return views


async def navigation(datasette: Datasette, actor: dict[str, Any] | None) -> list[dict]:
    views = {view["name"]: view for view in await visible_views(datasette, actor)}
    links = [{"name": "overview", "label": "Overview", "url": datasette.urls.instance()}]
    links += [{**views[name], "label": label} for name, label in NAV if name in views]
    if is_admin(actor) and actor.get("via") != "token":
        database = usage_db(datasette).name
        links.append({"name": "sql", "label": "SQL", "url": datasette.urls.database(database)})
    if actor and actor.get("person_id"):
        links.append({"name": "tokens", "label": "Account", "url": "/-/account/tokens"})
    return links


# The form: how each parameter is asked for.

STATUSES = ["200", "400", "401", "403", "404", "408", "413", "429", "500", "502", "503", "504"]
FIELDS: dict[str, dict[str, Any]] = {
    "from": {"label": "From", "type": "date"},
    "to": {"label": "To", "type": "date"},
    "period": {
        "label": "Period",
        "type": "select",
        "options": [("day", "Last 24 hours"), ("week", "Last 7 days"), ("month", "Last 30 days")],
        "default": "week",
    },
    "granularity": {
        "label": "Per",
        "type": "select",
        "options": [("day", "Day"), ("hour", "Hour")],
        "default": "day",
    },
    "by": {
        "label": "Split by",
        "type": "select",
        "options": [("provider", "Provider"), ("model", "Model")],
        "default": "provider",
    },
    "model": {"label": "Model", "type": "select", "any": "All models"},
    "family": {"label": "Model family", "type": "select", "any": "All models"},
    "status": {"label": "HTTP status", "type": "select", "any": "Any status"},
    "outcome": {
        "label": "Outcome",
        "type": "select",
        "any": "Any failure",
        "options": [
            ("provider_error", "Provider error"),
            ("upstream_error", "Upstream unreachable"),
            ("client_disconnected", "Client disconnected"),
            ("proxy_shutdown", "Proxy shut down"),
        ],
    },
    "key": {"label": "Tag key", "type": "select", "any": "All tags"},
    "id": {"label": "Request number", "type": "number"},
}
PRESET_DAYS = (7, 30, 90)

MODELS_SQL = """select distinct model from usage_daily
where org_id = :org_id and day >= date('now', '-89 days') and model != '' order by model"""
TAG_KEYS_SQL = """select distinct substr(label, 1, instr(label, '=') - 1) as key
from usage_daily_labels where org_id = :org_id and kind = 'tag' and label != ''
  and day >= date('now', '-89 days') order by key"""


async def _options(
    datasette: Datasette, name: str, org_id: int | None, value: str
) -> list[tuple[str, str]]:
    """A select's choices; the value asked for stays one of them."""
    field = FIELDS[name]
    options = list(field.get("options", []))
    if name == "status":
        options = [(s, s) for s in STATUSES]
    elif name in ("model", "family", "key") and org_id is not None:
        db = usage_db(datasette)
        sql = TAG_KEYS_SQL if name == "key" else MODELS_SQL
        values = [row[0] for row in (await db.execute(sql, {"org_id": org_id})).rows]
        if name == "family":
            values = sorted({model_family(v) for v in values})
        options = [(v, v) for v in values]
    if "any" in field:
        options.insert(0, ("", field["any"]))
    if value and value not in [v for v, _ in options]:
        options.append((value, value))
    return options


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


async def form_fields(
    datasette: Datasette,
    params: list[str],
    values: dict[str, str],
    org_id: int | None,
    problem: Problem | None,
) -> list[dict[str, Any]]:
    fields = []
    for name in params:
        spec = FIELDS.get(name, {"label": formatting.label(name), "type": "text"})
        value = values.get(name, "")
        shown = value
        if name in ("from", "to") and not value and problem is None:
            # Show the dates the view will use, so that the range is never a guess.
            try:
                stop = dt.date.fromisoformat(values["to"]) if values.get("to") else _today()
            except ValueError:
                stop = _today()
            shown = (
                stop if name == "to" else stop - dt.timedelta(days=DEFAULT_DAYS - 1)
            ).isoformat()
        field = {
            "name": name,
            "id": f"lm-{name}",
            "label": spec["label"],
            "type": spec["type"],
            "value": shown or spec.get("default", ""),
            "error": problem.message if problem and problem.field == name else None,
        }
        if spec["type"] == "select":
            field["options"] = await _options(datasette, name, org_id, value)
        fields.append(field)
    return fields


def presets(path: str, values: dict[str, str]) -> list[dict[str, str]]:
    """Links to the last 7, 30 and 90 days, the other parameters kept."""
    today = _today()
    links = []
    for days in PRESET_DAYS:
        args = {k: v for k, v in values.items() if v}
        args["from"] = (today - dt.timedelta(days=days - 1)).isoformat()
        args["to"] = today.isoformat()
        if args.get("granularity") == "hour" and days * 24 > MAX_BUCKETS:
            args["granularity"] = "day"
        current = values.get("from") == args["from"] and values.get("to") in ("", args["to"])
        if not values.get("from") and not values.get("to") and days == DEFAULT_DAYS:
            current = True
        links.append(
            {"label": f"Last {days} days", "url": f"{path}?{urlencode(args)}", "current": current}
        )
    return links


def extra_template_vars(template: str, request: Request, datasette: Datasette) -> Any:
    if request is None:
        return None
    if template == "index.html":

        async def landing() -> dict[str, Any]:
            actor = request.actor
            return {
                "views": await visible_views(datasette, actor),
                "lm_nav": await navigation(datasette, actor),
                "lm_current": "overview",
                "lm_refresh_seconds": REFRESH_SECONDS,
                "is_admin": is_admin(actor),
                "usage_database": usage_db(datasette).name,
                "org_id": (actor or {}).get("org_id"),
            }

        return landing
    name = request.url_vars.get("table")
    if not template.startswith("query-") or not name:
        return None

    async def view_page() -> dict[str, Any]:
        actor = request.actor
        database = usage_db(datasette).name
        query = await datasette.get_canned_query(database, name, actor) or {}
        invalid = request.scope.get("llm_monitor_invalid")
        problem = invalid["problem"] if invalid else None
        args = invalid["args"] if invalid else {k: request.args.getlist(k) for k in request.args}
        params = list(query.get("params") or [])
        values = {p: (args.get(p) or [""])[0] for p in params}
        org_id = (actor or {}).get("org_id")
        path = datasette.urls.table(database, name)
        return {
            "lm_nav": await navigation(datasette, actor),
            "lm_current": name,
            "lm_query": {"name": name, "title": query.get("title", name)},
            "lm_chart": query.get("chart"),
            "lm_fields": await form_fields(datasette, params, values, org_id, problem),
            "lm_presets": presets(path, values) if "from" in params else [],
            "lm_problem": problem,
            "lm_values": values,
            "lm_path": path,
            "lm_admin": is_admin(actor),
        }

    return view_page


# Parameter checks.

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_STATUS = re.compile(r"[1-5]\d\d", re.ASCII)
_DIGITS = re.compile(r"\d{1,6}", re.ASCII)
_ID = re.compile(r"[1-9]\d{0,17}", re.ASCII)
DEFAULT_DAYS = 30  # `from` defaults to 29 days before `to`, which defaults to today (UTC)
MAX_BUCKETS = 1000  # Datasette's max_returned_rows: a timeline never comes back cut short
MAX_SERIES = 8  # cost_series: the seven costliest series and (other), per day


@dataclass(frozen=True)
class Problem:
    """Why a view cannot answer: the parameter at fault (None for the whole request)."""

    field: str | None
    message: str


def _date(name: str, value: str) -> dt.date:
    try:
        if not _DATE.fullmatch(value):
            raise ValueError
        date = dt.date.fromisoformat(value)
        if not 1900 <= date.year <= 9998:
            raise ValueError
    except ValueError:
        raise _Bad(name, f"{name} must be a date as YYYY-MM-DD; got {value[:40]!r}") from None
    return date


class _Bad(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.problem = Problem(field, message)


def parameter_problem(
    allowed_values: dict[str, list[str]], params: list[str], args: dict[str, list[str]]
) -> Problem | None:
    """Why a canned query cannot answer these arguments, or None when it can. Only the
    parameters the query declares are read."""
    values = {name: (args.get(name) or [""])[0] for name in params}
    timelimit = (args.get("_timelimit") or [""])[0]
    if timelimit and not _DIGITS.fullmatch(timelimit):
        return Problem(None, f"_timelimit must be a number of milliseconds; got {timelimit[:40]!r}")
    for name, value in values.items():
        if value and name in allowed_values and value not in allowed_values[name]:
            choices = ", ".join(allowed_values[name])
            return Problem(name, f"{name} must be one of {choices}; got {value[:40]!r}")
    if values.get("status") and not _STATUS.fullmatch(values["status"]):
        message = f"status must be an HTTP status such as 429; got {values['status'][:40]!r}"
        return Problem("status", message)
    if values.get("id") and not _ID.fullmatch(values["id"]):
        return Problem("id", f"id must be a request number such as 42; got {values['id'][:40]!r}")
    if "from" not in values:
        return None
    try:
        stop = _date("to", values["to"]) if values.get("to") else _today()
        start = (
            _date("from", values["from"])
            if values["from"]
            else stop - dt.timedelta(days=DEFAULT_DAYS - 1)
        )
    except _Bad as e:
        return e.problem
    if start > stop:
        return Problem("from", f"from ({start}) is after to ({stop})")
    days = (stop - start).days + 1
    if "granularity" in values:
        buckets = days * 24 if values["granularity"] == "hour" else days
        if buckets > MAX_BUCKETS:
            return Problem(
                "from",
                f"{buckets:,} {values['granularity'] or 'day'}s between {start} and {stop}: "
                f"a timeline has at most {MAX_BUCKETS:,} buckets (by hour, 41 days)",
            )
    if "by" in values and days * MAX_SERIES > MAX_BUCKETS:
        most = MAX_BUCKETS // MAX_SERIES
        return Problem("from", f"{days:,} days between {start} and {stop}: at most {most} here")
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
    """Refuse bad parameters of the canned queries before they run; they are read-only,
    so only GET. The API gets a 400 with the message. A page is drawn by Datasette as
    usual (its permission checks included) but with no parameters, and the template shows
    the message beside the field instead of results: a 400 too."""

    def wrap(app: Any) -> Any:
        async def checked(scope: dict, receive: Any, send: Any) -> None:
            params = None
            if scope["type"] == "http":
                params = canned_query_params(datasette, scope.get("path", ""))
            if params is None:
                await app(scope, receive, send)
                return
            api = scope["path"].endswith((".json", ".csv"))
            json_wanted = scope["path"].endswith(".json")
            if scope["method"] not in ("GET", "HEAD"):
                await _send_error(send, "views are read with GET", json_wanted, 405)
                return
            allowed = (datasette.plugin_config("llm-monitor") or {}).get("params") or {}
            args = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            problem = parameter_problem(allowed, params, args)
            if problem is None:
                await app(scope, receive, send)
            elif api:
                await _send_error(send, problem.message, json_wanted, 400)
            else:
                invalid = {"problem": problem, "args": args}
                scope = {**scope, "query_string": b"", "llm_monitor_invalid": invalid}
                await app(scope, receive, _as_bad_request(send))

        return checked

    return wrap


def _as_bad_request(send: Any) -> Any:
    async def bad_request(message: dict) -> None:
        if message["type"] == "http.response.start" and message["status"] == 200:
            message = {**message, "status": 400}
        await send(message)

    return bad_request


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
