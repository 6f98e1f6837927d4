"""Who is asking, and what they may see: what the hooks of
`datasette_config/plugins/llm_monitor_auth.py` do.

- A person logs in at /-/login with their email and password (salted scrypt). Their
  session is the `ds_actor` cookie (so that Datasette shows "Log out") signed in a
  namespace of our own: it names the person, the organisation they are looking at, a
  fingerprint of their password hash and a random session id. Each request reloads the
  person's membership of that organisation, so a new password, a removed member or a new
  role takes effect at once. Logging out (/-/logout, ours) ends the session on the server
  too: its id goes into `ended_sessions`, so a copy of the cookie no longer works.
- Scripts send `Authorization: Bearer dash_...` (`llm-monitor dashboard-token`); the
  token acts with its own role (viewer unless made otherwise).
- The actor carries `org_id` and `role`; the canned queries read `:_actor_org_id`.
- Table pages, raw SQL and downloads, and Datasette's instance pages (/-/databases,
  /-/threads, /-/versions, ...) are for the instance admin only (Datasette's root, or an
  admin organisation's owner or admin logged in with a password; never through a bearer
  token). Anonymous visitors are sent to the login page.
- Logins are limited per address and per account (`accounts.ratelimit`): 429 and
  Retry-After past the limit.
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

from llm_monitor.accounts.audit import Who, record
from llm_monitor.accounts.passwords import MAX_LENGTH, verify_password
from llm_monitor.accounts.ratelimit import SlidingWindow
from llm_monitor.accounts.tokens import DASHBOARD_PREFIX, MAX_TOKEN_LENGTH, hash_token
from llm_monitor.dashboard import is_admin, usage_db
from llm_monitor.errors import RateLimited
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

# A person's membership of one organisation: what a session's actor is made of.
MEMBER_SQL = """
select p.id as person_id, p.email, p.password_hash, m.role, o.id as org_id, o.name,
  o.is_admin
from people p join members m on m.person_id = p.id join orgs o on o.id = m.org_id
where o.deleted_at is null
"""

# Failed logins per account and per address, sign-ups per address, in any window of
# that many seconds. One dashboard process serves every request, so memory is enough.
LOGIN_FAILURES_PER_ACCOUNT = (5, 15 * 60)
LOGIN_FAILURES_PER_ADDRESS = (20, 15 * 60)
SIGNUPS_PER_ADDRESS = (5, 3600)
# Instance pages that say how the server is set up: the instance admin's only.
INSTANCE_PAGES = re.compile(
    r"/-/(metadata|versions|plugins|settings|threads|databases|config)(\.json)?$"
)


def limits(datasette: Datasette) -> dict[str, SlidingWindow]:
    """The rate limits of this dashboard, made on first use."""
    found = getattr(datasette, "_llm_monitor_limits", None)
    if found is None:
        found = {
            "login_account": SlidingWindow(*LOGIN_FAILURES_PER_ACCOUNT),
            "login_address": SlidingWindow(*LOGIN_FAILURES_PER_ADDRESS),
            "signup_address": SlidingWindow(*SIGNUPS_PER_ADDRESS),
        }
        datasette._llm_monitor_limits = found
    return found


def client_address(request: Request) -> str:
    """The peer's address (a proxy in front should be the only peer: see README)."""
    client = request.scope.get("client")
    return str(client[0]) if client else "unknown"


def org_actor(row: Any, via: str) -> dict[str, Any]:
    role = row["role"]
    actor = {
        "id": f"org:{row['org_id']}",
        "org_id": row["org_id"],
        "display": row["name"],
        # An admin organisation's owners and admins (and its tokens, which read views
        # only) are the instance admin; its viewers see only its own views.
        "admin": bool(row["is_admin"]) and (via == "token" or role in ("owner", "admin")),
        "role": role,
        "via": via,
    }
    if "person_id" in row.keys():  # noqa: SIM118 (a sqlite3.Row's `in` reads its values)
        actor["person_id"] = row["person_id"]
        actor["email"] = row["email"]
    return actor


def who(request: Request) -> Who:
    """The acting person (or token) and address, for the audit log."""
    actor = request.actor or {}
    label = actor.get("email") or (f"token:{actor['token_id']}" if "token_id" in actor else "?")
    return Who(label, actor.get("person_id"), client_address(request))


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
            """select t.id, t.org_id, t.last_used_at, t.role, o.name, o.is_admin
            from dashboard_tokens t join orgs o on o.id = t.org_id
            where t.token_hash = ? and t.revoked_at is null and o.deleted_at is null""",
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
    return {**org_actor(row, via="token"), "token_id": row["id"]}


async def actor_from_session(datasette: Datasette, session: Any) -> dict[str, Any] | None:
    if not isinstance(session, dict) or not isinstance(session.get("o"), int):
        return None
    if not isinstance(session.get("p"), int):
        return None  # a cookie from before people had logins of their own
    if not isinstance(session.get("e"), int) or session["e"] < time.time():
        return None
    row = (
        await usage_db(datasette).execute(
            f"{MEMBER_SQL} and p.id = ? and o.id = ?", [session["p"], session["o"]]
        )
    ).first()
    if row is None:
        return None  # no longer a member (removed, or the organisation deleted)
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


def bearer_given(request: Request) -> bool:
    return request.headers.get("authorization", "").lower().startswith("bearer ")


def forbidden(request: Request, message: str) -> Response | None:
    """Send a browser without a session to the login page; API callers get a JSON 403,
    and a bearer token that is not (or no longer) a token a JSON 401."""
    if request.actor is None and bearer_given(request):
        return Response.json(
            {"ok": False, "error": "invalid token", "status": 401},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="llm-monitor"'},
        )
    if request.path.endswith(".json"):
        return Response.json({"ok": False, "error": message, "status": 403}, status=403)
    browser = "authorization" not in request.headers and not request.path.endswith(".csv")
    if request.actor is None and browser:
        return Response.redirect(f"/-/login?next={quote(request.full_path, safe='')}")
    return None


MAX_LOGIN_BODY = 16 * 1024


async def closed_to(datasette: Datasette, request: Request) -> bool:
    """Whether a logged-in caller is not the instance admin (with a password, or root):
    the actor resolved as Datasette resolves it (this runs before its router does).
    Anonymous callers are left to Datasette, which sends them to the login page."""
    from datasette.plugins import pm
    from datasette.utils import await_me_maybe

    for found in pm.hook.actor_from_request(datasette=datasette, request=request):
        actor = await await_me_maybe(found)
        if actor:
            return not (is_admin(actor) and actor.get("via") != "token")
    return False


def asgi_wrapper(datasette: Datasette) -> Any:
    """Close Datasette's instance pages to all but the instance admin. Read a login POST's
    body before Datasette's CSRF check does: one that is too large or not UTF-8 gets a
    plain 400 here instead of a server error there."""

    def wrap(app: Any) -> Any:
        async def checked(scope: dict, receive: Any, send: Any) -> None:
            if (
                scope["type"] == "http"
                and INSTANCE_PAGES.fullmatch(scope["path"])
                and await closed_to(datasette, Request(scope, receive))
            ):
                await Response.json(
                    {"ok": False, "error": "for the instance admin only", "status": 403},
                    status=403,
                ).asgi_send(send)
                return
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
    """The person's row (id, email, password_hash) when email and password match."""
    global _login_slots
    row = (
        await usage_db(datasette).execute(
            "select id, email, password_hash from people where email = ? collate nocase",
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


def start_session(
    datasette: Datasette, response: Response, person: Any, org_id: int, expires: int | None = None
) -> None:
    """Sign the session cookie for a person looking at one of their organisations."""
    session = {
        "p": person["id"],
        "o": org_id,
        "f": fingerprint(person["password_hash"]),
        "e": expires or int(time.time()) + SESSION_SECONDS,
        "s": secrets.token_urlsafe(16),  # what logging out ends
    }
    response.set_cookie(
        SESSION_COOKIE,
        datasette.sign(session, SESSION_NAMESPACE),
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="lax",
    )


async def first_org(datasette: Datasette, person_id: int, wanted: int | None = None) -> Any:
    """The organisation a login opens: `wanted` if the person is its member, else their
    first by name."""
    rows = (
        await usage_db(datasette).execute(
            f"{MEMBER_SQL} and p.id = ? order by o.id = ? desc, o.name", [person_id, wanted]
        )
    ).rows
    return rows[0] if rows else None


def too_many(error: RateLimited, html: bool = False) -> Response:
    headers = {"Retry-After": str(error.retry_after)}
    if html:
        return Response.text(f"Too many attempts: {error}.", status=429, headers=headers)
    body = {"ok": False, "error": str(error), "status": 429}
    return Response.json(body, status=429, headers=headers)


async def audit_login(
    datasette: Datasette, person_id: int, action: str, who: Who, org_id: int | None = None
) -> None:
    """A login or failed login, in the audit log of the person's organisations (or the
    one logged into)."""

    def write(conn: Any) -> None:
        from sqlite_utils import Database

        db = Database(conn)
        orgs = (
            [org_id]
            if org_id
            else [
                r[0]
                for r in conn.execute("select org_id from members where person_id = ?", [person_id])
            ]
        )
        with db.atomic():
            for org in orgs:
                record(db, org, who, action)

    await usage_db(datasette).execute_write_fn(write, block=False)


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
        address = client_address(request)
        account = email.strip().lower()
        windows = limits(datasette)
        try:
            windows["login_address"].check(address, "failed logins from this address")
            windows["login_account"].check(account, "failed logins for this account")
        except RateLimited as e:
            return too_many(e, html=True)
        person = await check_login(datasette, email, password)
        row = await first_org(datasette, person["id"]) if person is not None else None
        if row is not None:
            windows["login_account"].clear(account)
            response = Response.redirect(target)
            start_session(datasette, response, person, row["org_id"])
            who = Who(person["email"], person["id"], address)
            await audit_login(datasette, person["id"], "login", who, row["org_id"])
            return response
        windows["login_address"].hit(address)
        windows["login_account"].hit(account)
        if person is not None:  # the right password, but no organisation left
            error = "This login belongs to no organisation any more."
        else:
            error = "Wrong email or password."
            known = (
                await usage_db(datasette).execute(
                    "select id, email from people where email = ? collate nocase",
                    [email.strip()],
                )
            ).first()
            if known is not None:
                who = Who(known["email"], known["id"], address)
                await audit_login(datasette, known["id"], "login.failed", who)
    elif request.actor is not None:
        return Response.redirect(target)
    html = await datasette.render_template(
        "login.html",
        {"error": error, "email": email, "next": target, "allow_signup": signup_allowed(datasette)},
        request=request,
    )
    return Response.html(html, status=401 if error else 200)


def signup_allowed(datasette: Datasette) -> bool:
    return bool((datasette.plugin_config("llm-monitor") or {}).get("allow_signup"))


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
