"""The REST API under /api/: JSON in and out, for an organisation, authenticated by a
dashboard bearer token or a session (Datasette's CSRF check guards a session's POST and
DELETE: send the `ds_csrftoken` cookie's value as `X-CSRFToken`).

The stats answer with the same SQL as the dashboard's views (the canned queries of
metadata.yml) and refuse the same bad parameters; the tokens call
`llm_monitor.accounts.tokens`, as `llm-monitor tokens` does. Errors are JSON
`{"ok": false, "error": ..., "status": ...}` (and `"parameter"` for a 400 about one).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from datasette.app import Datasette
from datasette.utils.asgi import Request, Response
from sqlite_utils import Database

from llm_monitor.accounts.members import require
from llm_monitor.accounts.tokens import create_token, revoke_token, token_report
from llm_monitor.dashboard import auth, openapi, usage_db
from llm_monitor.dashboard.views import parameter_problem
from llm_monitor.errors import Conflict, DomainError, Forbidden, Invalid, NotFound, RateLimited
from llm_monitor.inert import ascii_int

MAX_BODY = 16 * 1024

# API path -> the canned query whose SQL answers it.
STATS = {"summary": "summary", "timeline": "timeline", "by-model": "by_model"}
STATUS = {Invalid: 400, Forbidden: 403, NotFound: 404, Conflict: 409, RateLimited: 429}


class ApiError(Exception):
    def __init__(self, status: int, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.parameter = parameter


def error_response(status: int, message: str, **extra: Any) -> Response:
    body = {"ok": False, "error": message, "status": status, **extra}
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="llm-monitor"'
    return Response.json(body, status=status, headers=headers)


def domain_response(error: DomainError) -> Response:
    status = next((s for kind, s in STATUS.items() if isinstance(error, kind)), 400)
    if isinstance(error, RateLimited):
        response = error_response(429, str(error))
        response.headers["Retry-After"] = str(error.retry_after)
        return response
    return error_response(status, str(error))


async def write[T](datasette: Datasette, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a domain operation in one transaction on Datasette's write thread."""

    def run(conn: Any) -> T:
        db = Database(conn)
        with db.atomic():
            return fn(db, *args, **kwargs)

    return await usage_db(datasette).execute_write_fn(run)


async def read[T](datasette: Datasette, fn: Callable[..., T], *args: Any) -> T:
    return await usage_db(datasette).execute_fn(lambda conn: fn(Database(conn), *args))


def org_actor(request: Request) -> dict[str, Any]:
    """The caller, who must be an organisation's member or token."""
    actor = request.actor
    if actor is None:
        given = auth.bearer_given(request)
        raise ApiError(
            401, "invalid token" if given else "missing credentials: send a bearer token"
        )
    if not isinstance(actor.get("org_id"), int):
        raise ApiError(403, "the API answers for an organisation; this login has none")
    return actor


def endpoint(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Errors of an API handler as JSON with their status, never a page or a traceback."""

    async def wrapped(datasette: Datasette, request: Request) -> Response:
        try:
            return await handler(datasette, request)
        except ApiError as e:
            extra = {"parameter": e.parameter} if e.parameter else {}
            return error_response(e.status, str(e), **extra)
        except DomainError as e:
            return domain_response(e)

    return wrapped


def methods(**handlers: Callable[..., Any]) -> Callable[..., Any]:
    async def dispatch(datasette: Datasette, request: Request) -> Response:
        handler = handlers.get(request.method.lower())
        if handler is None:
            allowed = ", ".join(m.upper() for m in handlers)
            response = error_response(405, f"use {allowed}")
            response.headers["Allow"] = allowed
            return response
        return await handler(datasette, request)

    return dispatch


@endpoint
async def stats(datasette: Datasette, request: Request) -> Response:
    actor = org_actor(request)
    name = STATS[request.url_vars["kind"]]
    database = usage_db(datasette)
    query = datasette.metadata("queries", database=database.name, fallback=False)[name]
    declared = list(query.get("params") or [])
    args = {key: request.args.getlist(key) for key in request.args}
    unknown = sorted(set(args) - set(declared))
    if unknown:
        raise ApiError(
            400, f"unknown parameter {unknown[0]!r}: use {', '.join(declared)}", unknown[0]
        )
    allowed = (datasette.plugin_config("llm-monitor") or {}).get("params") or {}
    problem = parameter_problem(allowed, declared, args)
    if problem is not None:
        raise ApiError(400, problem.message, problem.field)
    params = {key: (args.get(key) or [""])[0] for key in declared}
    result = await database.execute(query["sql"], {**params, "_actor_org_id": actor["org_id"]})
    rows = [dict(row) for row in result.rows]
    return Response.json({"ok": True, "org": actor["display"], "parameters": params, "rows": rows})


async def list_tokens(datasette: Datasette, request: Request) -> Response:
    actor = org_actor(request)
    tokens = await read(datasette, token_report, actor["org_id"])
    return Response.json({"ok": True, "org": actor["display"], "tokens": tokens})


async def body_json(request: Request) -> dict[str, Any]:
    body = await request.post_body()
    if len(body) > MAX_BODY:
        raise ApiError(413, f"a body has at most {MAX_BODY} bytes")
    try:
        data = json.loads(body)
    except ValueError:
        raise ApiError(
            400, 'the body must be JSON, e.g. {"name": "billing-service"}', "body"
        ) from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object", "body")
    return data


async def new_token(datasette: Datasette, request: Request) -> Response:
    actor = org_actor(request)
    require(actor.get("role"), "admin", "creating a token")
    data = await body_json(request)
    name = data.get("name")
    if not isinstance(name, str):
        raise ApiError(400, "name must be a string: the token's label", "name")
    try:
        token_id, token = await write(
            datasette, create_token, "monitor_tokens", actor["org_id"], name, auth.who(request)
        )
    except Invalid as e:
        raise ApiError(400, str(e), "name") from None
    body = {"ok": True, "id": token_id, "name": name.strip(), "token": token}
    return Response.json(body, status=201)


async def delete_token(datasette: Datasette, request: Request) -> Response:
    actor = org_actor(request)
    require(actor.get("role"), "admin", "revoking a token")
    raw = request.args.get("id", "")
    token_id = ascii_int(raw) if raw else None
    if token_id is None:
        raise ApiError(400, f"id must be a token id such as 3; got {raw[:40]!r}", "id")
    message = await write(
        datasette,
        revoke_token,
        "monitor_tokens",
        str(token_id),
        auth.who(request),
        org_id=actor["org_id"],
    )
    return Response.json({"ok": True, "id": token_id, "message": message})


async def openapi_document(datasette: Datasette, request: Request) -> Response:
    return Response.json(openapi.document())


async def not_found(datasette: Datasette, request: Request) -> Response:
    return error_response(404, f"no API route {request.path} (see /api/openapi.json)")


ROUTES: list[tuple[str, Any]] = [
    (r"^/api/stats/(?P<kind>summary|timeline|by-model)$", methods(get=stats)),
    (
        r"^/api/tokens$",
        methods(get=endpoint(list_tokens), post=endpoint(new_token), delete=endpoint(delete_token)),
    ),
    (r"^/api/openapi\.json$", methods(get=openapi_document)),
    (r"^/api/.*$", not_found),
]


def register_routes() -> list[tuple[str, Any]]:
    return ROUTES
