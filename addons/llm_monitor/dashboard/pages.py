"""The account pages: sign-up, monitor tokens, members and invitations, organisation
settings, the audit log, and switching organisation.

Each page reads the logged-in person's role from the actor, calls the same domain
functions as the CLI (`llm_monitor.accounts`) on Datasette's write thread, and draws a
template (`datasette_config/templates/account_*.html`). Forms are POSTs guarded by
Datasette's CSRF check; a refused operation is drawn again with its message.
"""

from __future__ import annotations

from typing import Any

from datasette.app import Datasette
from datasette.utils.asgi import Request, Response
from sqlite_utils import Database

from llm_monitor.accounts import audit, invitations, members, orgs, tokens
from llm_monitor.accounts.audit import Who
from llm_monitor.accounts.members import ROLES, allows
from llm_monitor.accounts.passwords import MAX_LENGTH, check_strength, hash_password
from llm_monitor.dashboard import auth, usage_db
from llm_monitor.dashboard.api import read, write
from llm_monitor.dashboard.views import navigation
from llm_monitor.errors import DomainError, Forbidden, Invalid, NotFound, RateLimited
from llm_monitor.inert import ascii_int
from llm_monitor.proxy.launch import DEFAULT_LISTENERS

# How each provider's SDK is pointed at its listener: (language, code with {base} and
# {token}). The OpenAI-compatible ones (xAI, others) use the OpenAI SDK.
SNIPPETS = {
    "openai": 'from openai import OpenAI\nclient = OpenAI(base_url="{base}/v1", '
    'default_headers={{"X-Monitor-Token": "{token}"}})',
    "anthropic": 'from anthropic import Anthropic\nclient = Anthropic(base_url="{base}", '
    'default_headers={{"X-Monitor-Token": "{token}"}})',
    "gemini": "from google import genai\nclient = genai.Client(http_options={{"
    '"base_url": "{base}", "headers": {{"X-Monitor-Token": "{token}"}}}})',
}


class Page(Exception):
    """Stop drawing: answer this response instead."""

    def __init__(self, response: Response) -> None:
        self.response = response


def listeners(datasette: Datasette) -> dict[str, int]:
    configured = (datasette.plugin_config("llm-monitor") or {}).get("listeners")
    return configured or {name: port for name, (_, port) in DEFAULT_LISTENERS.items()}


def snippets(datasette: Datasette, request: Request, token: str) -> list[dict[str, str]]:
    """Copy-ready lines for each provider listener of this server: the host the browser
    asked for, each listener's port, and https when the listeners serve TLS."""
    host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
    config = datasette.plugin_config("llm-monitor") or {}
    scheme = "https" if config.get("listener_scheme") == "https" else "http"
    found = []
    for name, port in listeners(datasette).items():
        base = f"{scheme}://{host}:{port}"
        code = SNIPPETS.get(name, SNIPPETS["openai"]).format(base=base, token=token)
        header = f"X-Monitor-Token: {token}"
        found.append({"provider": name, "base_url": base, "header": header, "code": code})
    return found


def member_actor(request: Request, needed: str = "viewer") -> dict[str, Any]:
    """The logged-in person, with at least role `needed`: anonymous browsers go to the
    login page; tokens, root and lesser roles get a 403."""
    actor = request.actor
    if actor is None:
        raise Page(Response.redirect(f"/-/login?next={request.path}"))
    if actor.get("via") != "password" or not isinstance(actor.get("person_id"), int):
        raise Page(Response.text("Account pages are for a logged-in person.", status=403))
    if not allows(actor.get("role"), needed):
        message = f"This page needs the {needed} role; you are {actor.get('role')}."
        raise Page(Response.text(message, status=403))
    return actor


async def render(
    datasette: Datasette,
    request: Request,
    template: str,
    context: dict[str, Any],
    status: int = 200,
) -> Response:
    actor = request.actor or {}
    person_id = actor.get("person_id")
    memberships = await read(datasette, members.orgs_of, person_id) if person_id else []
    html = await datasette.render_template(
        template,
        {
            "lm_nav": await navigation(datasette, request.actor),
            "lm_actor": actor,
            "lm_orgs": memberships,
            "lm_role": actor.get("role"),
            "allows": allows,
            **context,
        },
        request=request,
    )
    return Response.html(html, status=status)


def page(handler: Any) -> Any:
    async def wrapped(datasette: Datasette, request: Request) -> Response:
        try:
            return await handler(datasette, request)
        except Page as stop:
            return stop.response

    return wrapped


async def form(request: Request) -> dict[str, str]:
    return {k: v[:MAX_LENGTH] for k, v in (await request.post_vars()).items()}


# Sign-up.


@page
async def signup(datasette: Datasette, request: Request) -> Response:
    if not auth.signup_allowed(datasette):
        return Response.text("Not found", status=404)
    values: dict[str, str] = {}
    error = None
    if request.method == "POST":
        if auth.cross_site(request):
            return Response.text("Sign up from the sign-up page (/-/signup).", status=403)
        values = await form(request)
        address = auth.client_address(request)
        window = auth.limits(datasette)["signup_address"]
        try:
            window.check(address, "sign-ups from this address")
        except RateLimited as e:
            return auth.too_many(e, html=True)
        window.hit(address)
        try:
            check_strength(values.get("password", ""))
        except ValueError as e:
            error = str(e)
        else:
            email = values.get("email", "").strip()
            who = Who(email, None, address)
            try:
                created = await write(
                    datasette,
                    orgs.sign_up,
                    values.get("name", ""),
                    email,
                    hash_password(values["password"]),
                    who,
                )
            except DomainError as e:
                error = str(e)
            else:
                person = (
                    await usage_db(datasette).execute(
                        "select id, email, password_hash from people where email = ? "
                        "collate nocase",
                        [email],
                    )
                ).first()
                response = await render(
                    datasette,
                    request,
                    "account_token_created.html",
                    {
                        "welcome": created.name,
                        "token": created.token,
                        "snippets": snippets(datasette, request, created.token),
                    },
                    status=201,
                )
                auth.start_session(datasette, response, person, created.org_id)
                return response
    values.pop("password", None)
    return await render(
        datasette,
        request,
        "account_signup.html",
        {"values": values, "error": error},
        status=400 if error else 200,
    )


# Tokens.


@page
async def tokens_page(datasette: Datasette, request: Request) -> Response:
    actor = member_actor(request)
    error = None
    if request.method == "POST":
        values = await form(request)
        try:
            members.require(actor["role"], "admin", "creating a token")
            _, token = await write(
                datasette,
                tokens.create_token,
                "monitor_tokens",
                actor["org_id"],
                values.get("label", "") or None,
                auth.who(request),
            )
        except Forbidden as e:
            return Response.text(str(e), status=403)
        except DomainError as e:
            error = str(e)
        else:
            return await render(
                datasette,
                request,
                "account_token_created.html",
                {"token": token, "snippets": snippets(datasette, request, token)},
                status=201,
            )
    rows = await read(datasette, tokens.token_report, actor["org_id"])
    context = {"tokens": rows, "error": error, "lm_current": "tokens"}
    return await render(
        datasette, request, "account_tokens.html", context, status=400 if error else 200
    )


@page
async def revoke_page(datasette: Datasette, request: Request) -> Response:
    """A confirmation page (GET), then the revocation (POST)."""
    actor = member_actor(request, "admin")
    values = await form(request) if request.method == "POST" else dict(request.args)
    token_id = ascii_int(values.get("id", ""))
    rows = await read(datasette, tokens.token_report, actor["org_id"])
    token = next((t for t in rows if t["id"] == token_id), None)
    if token is None:
        return Response.text("No such token in this organisation.", status=404)
    if request.method == "POST":
        message = await write(
            datasette,
            tokens.revoke_token,
            "monitor_tokens",
            str(token_id),
            auth.who(request),
            org_id=actor["org_id"],
        )
        datasette.add_message(request, message.capitalize(), datasette.INFO)
        return Response.redirect("/-/account/tokens")
    return await render(
        datasette, request, "account_token_revoke.html", {"token": token, "lm_current": "tokens"}
    )


# Members and invitations.


@page
async def members_page(datasette: Datasette, request: Request) -> Response:
    actor = member_actor(request)
    error, invite = None, None
    if request.method == "POST":
        values = await form(request)
        who, role, org_id = auth.who(request), actor["role"], actor["org_id"]
        action = values.get("action")
        try:
            if action == "invite":
                _, secret = await write(
                    datasette,
                    invitations.create_invitation,
                    org_id,
                    values.get("role", "viewer"),
                    who,
                    role,
                )
                invite = f"{request.scheme}://{request.host}/-/invite/{secret}"
            elif action == "revoke-invitation":
                number = ascii_int(values.get("id", "")) or 0
                await write(datasette, invitations.revoke_invitation, org_id, number, who, role)
            elif action == "set-role":
                await write(
                    datasette,
                    members.set_role,
                    org_id,
                    values.get("person", ""),
                    values.get("role", ""),
                    who,
                    role,
                )
            elif action == "remove":
                await write(
                    datasette, members.remove_member, org_id, values.get("person", ""), who, role
                )
            else:
                raise Invalid("unknown action")
        except Forbidden as e:
            return Response.text(str(e), status=403)
        except DomainError as e:
            error = str(e)
        if not error and not invite:
            return Response.redirect("/-/account/members")
    context = {
        "members": await read(datasette, members.list_members, actor["org_id"]),
        "invitations": await read(datasette, invitations.list_invitations, actor["org_id"]),
        "roles": ROLES,
        "error": error,
        "invite": invite,
        "valid_days": invitations.VALID_DAYS,
        "lm_current": "members",
    }
    return await render(
        datasette, request, "account_members.html", context, status=400 if error else 200
    )


@page
async def invite_page(datasette: Datasette, request: Request) -> Response:
    """An invitation link: a logged-in person joins with one click; anyone else makes a
    login (email and password) and joins."""
    secret = request.url_vars["token"]
    try:
        invitation = await read(datasette, invitations.find_invitation, secret)
    except NotFound as e:
        return Response.text(str(e), status=404)
    actor = request.actor or {}
    error, values = None, {}
    if request.method == "POST":
        values = await form(request)
        address = auth.client_address(request)
        try:
            if isinstance(actor.get("person_id"), int):
                person = {"id": actor["person_id"], "email": actor["email"]}
            else:
                window = auth.limits(datasette)["signup_address"]
                window.check(address, "sign-ups from this address")
                window.hit(address)
                try:
                    check_strength(values.get("password", ""))
                except ValueError as e:
                    raise Invalid(str(e)) from None
                password_hash = hash_password(values["password"])
                email = values.get("email", "")

                def new_person(db: Database) -> dict[str, Any]:
                    person_id = members.create_person(db, email, password_hash)
                    return {"id": person_id, "email": email.strip()}

                person = await write(datasette, new_person)
            who = Who(person["email"], person["id"], address)
            await write(datasette, invitations.accept_invitation, secret, person["id"], who)
        except RateLimited as e:
            return auth.too_many(e, html=True)
        except DomainError as e:
            error = str(e)
        else:
            row = (
                await usage_db(datasette).execute(
                    "select id, email, password_hash from people where id = ?", [person["id"]]
                )
            ).first()
            response = Response.redirect("/")
            auth.start_session(datasette, response, row, invitation["org_id"])
            return response
    values.pop("password", None)
    context = {"invitation": invitation, "error": error, "values": values}
    return await render(
        datasette, request, "account_invite.html", context, status=400 if error else 200
    )


# Settings, audit log, switching organisation.


@page
async def settings_page(datasette: Datasette, request: Request) -> Response:
    actor = member_actor(request, "owner")
    error = None
    if request.method == "POST":
        values = await form(request)
        who, org_id = auth.who(request), actor["org_id"]
        action = values.get("action")
        try:
            if action == "rename":
                await write(
                    datasette, orgs.rename_org, org_id, values.get("name", ""), who, "owner"
                )
            elif action == "email":
                email = values.get("email", "")
                await write(datasette, orgs.set_org_email, org_id, email, who, "owner")
            elif action == "delete":
                name = (await read(datasette, orgs.org_row, org_id))["name"]
                if values.get("confirm", "").strip() != name:
                    raise Invalid(f"type the organisation's name, {name}, to delete it")
                await write(datasette, orgs.delete_org, org_id, who, "owner")
                response = Response.redirect("/-/login")
                response.set_cookie(auth.SESSION_COOKIE, "", expires=0, max_age=0)
                return response
            else:
                raise Invalid("unknown action")
        except DomainError as e:
            error = str(e)
        else:
            return Response.redirect("/-/account/settings")
    org = await read(datasette, orgs.org_row, actor["org_id"])
    context = {"org": org, "error": error, "lm_current": "settings"}
    return await render(
        datasette, request, "account_settings.html", context, status=400 if error else 200
    )


@page
async def audit_page(datasette: Datasette, request: Request) -> Response:
    actor = member_actor(request, "admin")
    events = await read(datasette, audit.list_events, actor["org_id"])
    return await render(
        datasette, request, "account_audit.html", {"events": events, "lm_current": "audit"}
    )


@page
async def switch_org(datasette: Datasette, request: Request) -> Response:
    actor = member_actor(request)
    if request.method != "POST":
        return Response.text("Switch organisation with the form (POST).", status=405)
    org_id = ascii_int((await form(request)).get("org_id", ""))
    row = await auth.first_org(datasette, actor["person_id"], org_id)
    if row is None or row["org_id"] != org_id:
        return Response.text("You are not a member of that organisation.", status=403)
    person = (
        await usage_db(datasette).execute(
            "select id, email, password_hash from people where id = ?", [actor["person_id"]]
        )
    ).first()
    response = Response.redirect("/")
    auth.start_session(datasette, response, person, org_id)
    return response


def register_routes() -> list[tuple[str, Any]]:
    return [
        (r"^/-/signup$", signup),
        (r"^/-/account/tokens$", tokens_page),
        (r"^/-/account/tokens/revoke$", revoke_page),
        (r"^/-/account/members$", members_page),
        (r"^/-/account/settings$", settings_page),
        (r"^/-/account/audit$", audit_page),
        (r"^/-/account/switch$", switch_org),
        (r"^/-/invite/(?P<token>[A-Za-z0-9_-]{1,200})$", invite_page),
    ]
