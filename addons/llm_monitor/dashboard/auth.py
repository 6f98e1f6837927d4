"""Who is asking, and what they may see: what the hooks of
`datasette_config/plugins/llm_monitor_auth.py` do.

- An organisation logs in at /-/login with its email and password (salted scrypt, set by
  `llm-monitor orgs create/set-password`). Its session is the `ds_actor` cookie (so that
  Datasette shows "Log out") signed in a namespace of our own: it names the organisation,
  a fingerprint of its password hash and a random session id, and each request reloads the
  organisation, so a new password or a revoked admin flag takes effect at once. Logging
  out (/-/logout, ours) ends the session on the server too: its id goes into
  `ended_sessions`, so a copy of the cookie no longer works.
- Scripts send `Authorization: Bearer dash_...` (`llm-monitor dashboard-token`).
- The actor carries `org_id`; the canned queries read it as `:_actor_org_id`.
- Table pages, raw SQL and downloads are for admins only (Datasette's root, or an
  organisation marked admin, logged in with its password; never through a bearer token).
  Anonymous visitors are sent to the login page.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
from typing import Any
from urllib.parse import quote

from datasette.app import Datasette
from datasette.utils.asgi import Request, Response
from itsdangerous import BadSignature

from llm_monitor.accounts.passwords import MAX_LENGTH, verify_password
from llm_monitor.accounts.tokens import DASHBOARD_PREFIX, MAX_TOKEN_LENGTH, hash_token
from llm_monitor.dashboard import is_admin, usage_db
from llm_monitor.usage import utc_timestamp

SESSION_COOKIE = "ds_actor"
SESSION_NAMESPACE = "llm-monitor-session"  # Datasette's own cookie hook cannot read these
SESSION_SECONDS = 7 * 24 * 3600
LAST_USED_EVERY_SECONDS = 60  # a bearer token's last_used_at is written at most this often
CONCURRENT_LOGINS = 4  # scrypt checks at once: each takes ~50 ms of CPU and 16 MB

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
_SAFE_NEXT = re.compile(r"/(?![/\\])[\x21-\x7e]*")
_login_slots: asyncio.Semaphore | None = None

ORG_SQL = "select id as org_id, name, is_admin, password_hash from orgs"


def org_actor(row: Any, via: str) -> dict[str, Any]:
    return {
        "id": f"org:{row['org_id']}",
        "org_id": row["org_id"],
        "display": row["name"],
        "admin": bool(row["is_admin"]),
        "via": via,
    }


def fingerprint(password_hash: str) -> str:
    """Changes when the password does; tells nothing about it."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def permission_allowed(
    datasette: Datasette, actor: dict[str, Any] | None, action: str, resource: Any
) -> bool | None:
    if action in ADMIN_ONLY:
        return is_admin(actor) and actor.get("via") != "token"
    if action == "view-instance":
        return actor is not None
    if action == "view-database":  # the usage database's page lists its views
        return is_admin(actor) or (actor is not None and resource == usage_db(datasette).name)
    return None  # view-query: each query's own `allow` block decides


def actor_from_request(datasette: Datasette, request: Request) -> Any:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer":
        if token.startswith(DASHBOARD_PREFIX) and len(token) <= MAX_TOKEN_LENGTH:
            return actor_from_token(datasette, token)
        return None
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        try:
            session = datasette.unsign(cookie, SESSION_NAMESPACE)
        except BadSignature:
            return None  # not ours: root's cookie, read by Datasette's own hook
        return actor_from_session(datasette, session)
    return None


async def actor_from_token(datasette: Datasette, token: str) -> dict[str, Any] | None:
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
    if row["last_used_at"] is None or row["last_used_at"] < utc_timestamp(
        now - LAST_USED_EVERY_SECONDS
    ):
        await db.execute_write(
            "update dashboard_tokens set last_used_at = ? where id = ?",
            [utc_timestamp(now), row["id"]],
            block=False,
        )
    return org_actor(row, via="token")


async def actor_from_session(datasette: Datasette, session: Any) -> dict[str, Any] | None:
    if not isinstance(session, dict) or not isinstance(session.get("o"), int):
        return None
    if not isinstance(session.get("e"), int) or session["e"] < time.time():
        return None
    row = (await usage_db(datasette).execute(f"{ORG_SQL} where id = ?", [session["o"]])).first()
    if row is None or row["password_hash"] is None:
        return None
    if fingerprint(row["password_hash"]) != session.get("f"):
        return None  # the password changed since this session began
    if not isinstance(session.get("s"), str) or await session_ended(datasette, session["s"]):
        return None  # logged out (or a cookie from before sessions had ids)
    return org_actor(row, via="password")


async def session_ended(datasette: Datasette, session_id: str) -> bool:
    ended = await usage_db(datasette).execute(
        "select 1 from ended_sessions where session_id = ?", [session_id]
    )
    return ended.first() is not None


def forbidden(request: Request, message: str) -> Response | None:
    """Send a browser without a session to the login page; API callers get a JSON 403."""
    if request.path.endswith(".json"):
        return Response.json({"ok": False, "error": message, "status": 403}, status=403)
    browser = "authorization" not in request.headers and not request.path.endswith(".csv")
    if request.actor is None and browser:
        return Response.redirect(f"/-/login?next={quote(request.full_path, safe='')}")
    return None


MAX_LOGIN_BODY = 16 * 1024


def asgi_wrapper() -> Any:
    """Read a login POST's body before Datasette's CSRF check does: one that is too large
    or not UTF-8 gets a plain 400 here instead of a server error there."""

    def wrap(app: Any) -> Any:
        async def checked(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/-/login":
                await app(scope, receive, send)
                return
            body, more = b"", True
            while more and len(body) <= MAX_LOGIN_BODY:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
            try:
                if len(body) > MAX_LOGIN_BODY:
                    raise ValueError
                body.decode("utf-8")
            except ValueError:
                await Response.text("Bad request: not a login form.", status=400).asgi_send(send)
                return
            replayed = False

            async def replay() -> dict[str, Any]:
                nonlocal replayed
                if replayed:
                    return await receive()
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            await app(scope, replay, send)

        return checked

    return wrap


def register_routes() -> list[tuple[str, Any]]:
    return [(r"^/-/login$", login), (r"^/-/logout$", logout)]


def safe_next(target: str | None) -> str:
    """Only a path on this server, in plain ASCII: never a redirect to another site."""
    if target and _SAFE_NEXT.fullmatch(target):
        return target
    return "/"


async def check_login(datasette: Datasette, email: str, password: str) -> Any:
    """The organisation's row when email and password match, else None."""
    global _login_slots
    row = (
        await usage_db(datasette).execute(
            f"""{ORG_SQL} where email = ? collate nocase and password_hash is not null
            order by id limit 1""",
            [email.strip()],
        )
    ).first()
    stored = row["password_hash"] if row else None
    # scrypt runs off the event loop, a few at a time, and for unknown emails too, so
    # that timing does not tell which emails have a login.
    _login_slots = _login_slots or asyncio.Semaphore(CONCURRENT_LOGINS)
    async with _login_slots:
        matches = await asyncio.to_thread(verify_password, password, stored)
    return row if matches and row is not None else None


def cross_site(request: Request) -> bool:
    """A login posted from another site's page (login CSRF): browsers say so."""
    return request.headers.get("sec-fetch-site", "") == "cross-site"


async def login(datasette: Datasette, request: Request) -> Response:
    error, email = None, ""
    target = safe_next(request.args.get("next"))
    if request.method == "POST":
        # Datasette's CSRF check passes a POST without cookies: a login form from another
        # site would be one. Ours always has the CSRF cookie set by the login page.
        if "ds_csrftoken" not in request.cookies or cross_site(request):
            return Response.text("Log in from the login page (/-/login).", status=403)
        form = await request.post_vars()
        email, password = form.get("email", "")[:320], form.get("password", "")[:MAX_LENGTH]
        target = safe_next(form.get("next"))
        row = await check_login(datasette, email, password)
        if row is not None:
            response = Response.redirect(target)
            session = {
                "o": row["org_id"],
                "f": fingerprint(row["password_hash"]),
                "e": int(time.time()) + SESSION_SECONDS,
                "s": secrets.token_urlsafe(16),  # what logging out ends
            }
            response.set_cookie(
                SESSION_COOKIE,
                datasette.sign(session, SESSION_NAMESPACE),
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


async def logout(datasette: Datasette, request: Request) -> Response:
    """Datasette's logout page and form, and the session ended on the server as well as
    in the browser (POST only: Datasette's CSRF check guards it)."""
    if request.method != "POST":
        if request.actor is None:
            return Response.redirect(datasette.urls.instance())
        html = await datasette.render_template(
            "logout.html", {"actor": request.actor}, request=request
        )
        return Response.html(html)
    try:
        session = datasette.unsign(request.cookies.get(SESSION_COOKIE, ""), SESSION_NAMESPACE)
    except BadSignature:
        session = None  # root's cookie, or none: only the browser's copy is dropped
    if isinstance(session, dict) and isinstance(session.get("s"), str):
        now = int(time.time())
        expires = session.get("e") if isinstance(session.get("e"), int) else now
        await usage_db(datasette).execute_write_fn(
            lambda conn: _end_session(conn, session["s"], expires, now)
        )
    response = Response.redirect(datasette.urls.instance())
    response.set_cookie(SESSION_COOKIE, "", expires=0, max_age=0)
    datasette.add_message(request, "You are now logged out", datasette.WARNING)
    return response


def _end_session(conn: Any, session_id: str, expires_at: int, now: int) -> None:
    with conn:
        conn.execute("delete from ended_sessions where expires_at < ?", [now])
        conn.execute(
            "insert or replace into ended_sessions (session_id, expires_at) values (?, ?)",
            [session_id, expires_at],
        )
