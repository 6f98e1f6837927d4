"""Who is asking, and what they may see.

- An organisation logs in at /-/login with its email and password (salted scrypt, set by
  `llm-monitor orgs create/set-password`); the session is Datasette's signed `ds_actor`
  cookie. Scripts send `Authorization: Bearer dash_...` (`llm-monitor dashboard-token`).
- The actor carries `org_id`; the canned queries read it as `:_actor_org_id`.
- Table pages, raw SQL and downloads are for admins only: Datasette's root, or an
  organisation marked admin. Anonymous visitors are sent to the login page.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

from datasette import hookimpl
from datasette.app import Datasette
from datasette.utils import baseconv
from datasette.utils.asgi import Request, Response

from llm_monitor.dashboard import is_admin, usage_db
from llm_monitor.passwords import MAX_LENGTH, verify_password
from llm_monitor.tokens import DASHBOARD_PREFIX, MAX_TOKEN_LENGTH, hash_token
from llm_monitor.usage import utc_timestamp

SESSION_SECONDS = 7 * 24 * 3600
LAST_USED_EVERY_SECONDS = 60  # a bearer token's last_used_at is written at most this often

# Everything that shows rows beyond the canned queries, or changes anything.
ADMIN_ONLY = {
    "view-table",
    "execute-sql",
    "view-database-download",
    "insert-row",
    "delete-row",
    "update-row",
    "create-table",
    "alter-table",
    "drop-table",
    "permissions-debug",
    "debug-menu",
}


def org_actor(row: dict[str, Any], via: str) -> dict[str, Any]:
    return {
        "id": f"org:{row['org_id']}",
        "org_id": row["org_id"],
        "display": row["name"],
        "admin": bool(row["is_admin"]),
        "via": via,
    }


@hookimpl
def permission_allowed(
    datasette: Datasette, actor: dict[str, Any] | None, action: str, resource: Any
) -> bool | None:
    if action in ADMIN_ONLY:
        return is_admin(actor)
    if action == "view-instance":
        return actor is not None
    if action == "view-database":  # the usage database's page lists its views
        return is_admin(actor) or (actor is not None and resource == usage_db(datasette).name)
    return None  # view-query: each query's own `allow` block decides


@hookimpl
def actor_from_request(datasette: Datasette, request: Request) -> Any:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token.startswith(DASHBOARD_PREFIX):
        return None
    if len(token) > MAX_TOKEN_LENGTH:
        return None

    async def from_token() -> dict[str, Any] | None:
        db = usage_db(datasette)
        row = (
            await db.execute(
                """select t.id, t.org_id, t.last_used_at, o.name, o.is_admin
                from dashboard_tokens t join orgs o on o.id = t.org_id
                where t.token_hash = ? and t.revoked_at is null""",
                [hash_token(token)],
            )
        ).first()
        if row is None:
            return None
        now = time.time()
        last_used = utc_timestamp(now - LAST_USED_EVERY_SECONDS)
        if row["last_used_at"] is None or row["last_used_at"] < last_used:
            await db.execute_write(
                "update dashboard_tokens set last_used_at = ? where id = ?",
                [utc_timestamp(now), row["id"]],
                block=False,
            )
        return org_actor(dict(row), via="token")

    return from_token


@hookimpl
def forbidden(request: Request, message: str) -> Response | None:
    """Send a browser without a session to the login page; API callers get a JSON 403."""
    if request.path.endswith(".json"):
        return Response.json({"ok": False, "error": message, "status": 403}, status=403)
    browser = "authorization" not in request.headers and not request.path.endswith(".csv")
    if request.actor is None and browser:
        return Response.redirect(f"/-/login?next={quote(request.full_path, safe='')}")
    return None


@hookimpl
def register_routes() -> list[tuple[str, Any]]:
    return [(r"^/-/login$", login)]


def safe_next(target: str | None) -> str:
    """Only a path on this server: never an open redirect to another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


async def check_login(datasette: Datasette, email: str, password: str) -> dict[str, Any] | None:
    row = (
        await usage_db(datasette).execute(
            """select id as org_id, name, is_admin, password_hash from orgs
            where email = ? collate nocase and password_hash is not null
            order by id limit 1""",
            [email.strip()],
        )
    ).first()
    stored = row["password_hash"] if row else None
    # scrypt takes tens of milliseconds: off the event loop. It runs for unknown emails
    # too, so that timing does not tell which emails have a login.
    if await asyncio.to_thread(verify_password, password, stored) and row is not None:
        return org_actor(dict(row), via="password")
    return None


async def login(datasette: Datasette, request: Request) -> Response:
    error, email = None, ""
    target = safe_next(request.args.get("next"))
    if request.method == "POST":
        form = await request.post_vars()
        email, password = form.get("email", "")[:320], form.get("password", "")[:MAX_LENGTH]
        target = safe_next(form.get("next"))
        actor = await check_login(datasette, email, password)
        if actor is not None:
            response = Response.redirect(target)
            expires = baseconv.base62.encode(int(time.time()) + SESSION_SECONDS)
            response.set_cookie(
                "ds_actor",
                datasette.sign({"a": actor, "e": expires}, "actor"),
                max_age=SESSION_SECONDS,
                httponly=True,
                samesite="lax",
            )
            return response
        error = "Wrong email or password."
    elif request.actor is not None:
        return Response.redirect(target)
    html = await datasette.render_template(
        "login.html", {"error": error, "email": email, "next": target}, request=request
    )
    return Response.html(html, status=401 if error else 200)
