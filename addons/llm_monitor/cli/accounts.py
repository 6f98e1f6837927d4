"""`llm-monitor orgs`, `members`, `tokens` and `dashboard-token`: organisations, their
logins, members and tokens. Each command parses its arguments, calls
`llm_monitor.accounts` and prints."""

from __future__ import annotations

import json

import click

from llm_monitor.accounts import invitations
from llm_monitor.accounts import members as members_
from llm_monitor.accounts.audit import CLI
from llm_monitor.accounts.members import ROLES
from llm_monitor.accounts.orgs import (
    create_org,
    delete_org,
    find_org,
    list_orgs,
    rename_org,
    set_org_email,
    set_password,
)
from llm_monitor.accounts.tokens import create_token, list_tokens, revoke_token
from llm_monitor.cli.common import emit, get_db, handle_errors, json_option, prompt_password_hash


@click.group()
def orgs() -> None:
    """Organisations: each has its own monitor tokens and sees only its own usage."""


@orgs.command("create")
@click.argument("name")
@click.option("--email", required=True, help="Contact and dashboard login of the organisation.")
@click.option("--token-name", default="default", show_default=True, help="Label of the token.")
@click.option(
    "--password", "with_password", is_flag=True, help="Set a dashboard password (prompted)."
)
@click.option("--admin", is_flag=True, help="Its login sees every organisation and can run SQL.")
@json_option
@click.pass_context
@handle_errors
def orgs_create(
    ctx: click.Context,
    name: str,
    email: str,
    token_name: str,
    with_password: bool,
    admin: bool,
    as_json: bool,
) -> None:
    """Create an organisation and print its first monitor token (shown only this once).

    With --password, its dashboard login (the email and that password) works at once;
    otherwise set one later with `llm-monitor orgs set-password`.
    """
    if not name.strip():
        raise click.BadParameter("must not be empty", param_hint="NAME")
    if "@" not in email:
        raise click.BadParameter(f"{email.strip()!r} is not an email address", param_hint="--email")
    db = get_db(ctx)
    password_hash = prompt_password_hash() if with_password else None
    org = create_org(
        db, name, email, password_hash=password_hash, admin=admin, token_label=token_name
    )
    if as_json:
        fields = {"org_id": org.org_id, "name": org.name, "token_id": org.token_id}
        click.echo(json.dumps({**fields, "token": org.token}))
    else:
        click.echo(
            f"Created organisation {org.name!r} (id {org.org_id}). Its monitor token, shown "
            "only this once:\n"
        )
        click.echo(org.token)


@orgs.command("list")
@json_option
@click.pass_context
@handle_errors
def orgs_list(ctx: click.Context, as_json: bool) -> None:
    """Organisations with their number of live tokens and requests."""
    emit(list_orgs(get_db(ctx)), as_json)


@orgs.command("set-password")
@click.argument("name")
@click.option(
    "--admin/--no-admin",
    default=None,
    help="Also make the organisation an admin (sees every organisation), or no longer one.",
)
@click.pass_context
@handle_errors
def orgs_set_password(ctx: click.Context, name: str, admin: bool | None) -> None:
    """Set the password an organisation logs in to the dashboard with (prompted twice).

    It logs in with its email (see `orgs list`). The password is stored as a salted scrypt
    hash. Reads the password from standard input when that is not a terminal.
    """
    db = get_db(ctx)
    org_id = find_org(db, name)
    email = set_password(db, org_id, prompt_password_hash(), admin=admin)
    click.echo(f"password set for {name!r}: log in to the dashboard as {email}")


@orgs.command("rename")
@click.argument("name")
@click.argument("new_name")
@click.pass_context
@handle_errors
def orgs_rename(ctx: click.Context, name: str, new_name: str) -> None:
    """Rename an organisation."""
    db = get_db(ctx)
    click.echo(f"renamed to {rename_org(db, find_org(db, name), new_name, CLI)!r}")


@orgs.command("set-email")
@click.argument("name")
@click.argument("email")
@click.pass_context
@handle_errors
def orgs_set_email(ctx: click.Context, name: str, email: str) -> None:
    """Change an organisation's email; the member who logged in with the old one logs in
    with the new one. Refused when the email is already someone's login."""
    db = get_db(ctx)
    click.echo(f"{name!r} now has the email {set_org_email(db, find_org(db, name), email, CLI)}")


@orgs.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
@handle_errors
def orgs_delete(ctx: click.Context, name: str, yes: bool) -> None:
    """Delete an organisation: its tokens are revoked and its members lose access at once;
    its usage rows stay (the instance admin still sees them)."""
    db = get_db(ctx)
    org_id = find_org(db, name)
    if not yes:
        click.confirm(f"Delete {name!r}, revoking all its tokens?", abort=True, err=True)
    click.echo(f"deleted {delete_org(db, org_id, CLI)!r}")


@click.group()
def members() -> None:
    """People who log in to an organisation's dashboard, and their roles (viewer, admin,
    owner)."""


@members.command("list")
@click.option("--org", "org_name", required=True, help="The organisation.")
@json_option
@click.pass_context
@handle_errors
def members_list(ctx: click.Context, org_name: str, as_json: bool) -> None:
    """Members with their role, and the pending invitations."""
    db = get_db(ctx)
    org_id = find_org(db, org_name)
    emit(members_.list_members(db, org_id), as_json)
    if not as_json:
        pending = invitations.list_invitations(db, org_id)
        if pending:
            click.echo("\npending invitations:")
            emit(pending, False)


@members.command("invite")
@click.option("--org", "org_name", required=True, help="The organisation.")
@click.option("--role", type=click.Choice(ROLES), default="viewer", show_default=True)
@click.option(
    "--url", default="http://127.0.0.1:8001", show_default=True, help="The dashboard's address."
)
@click.pass_context
@handle_errors
def members_invite(ctx: click.Context, org_name: str, role: str, url: str) -> None:
    """Print a one-time invitation link (shown only this once, valid 7 days)."""
    db = get_db(ctx)
    _, secret = invitations.create_invitation(db, find_org(db, org_name), role, CLI, None)
    click.echo(f"{url.rstrip('/')}/-/invite/{secret}")


@members.command("remove")
@click.option("--org", "org_name", required=True, help="The organisation.")
@click.argument("email")
@click.pass_context
@handle_errors
def members_remove(ctx: click.Context, org_name: str, email: str) -> None:
    """Remove a member; their next request is refused."""
    db = get_db(ctx)
    member = members_.remove_member(db, find_org(db, org_name), email, CLI, None)
    click.echo(f"removed {member['email']} from {org_name!r}")


@members.command("set-role")
@click.option("--org", "org_name", required=True, help="The organisation.")
@click.argument("email")
@click.argument("role", type=click.Choice(ROLES))
@click.pass_context
@handle_errors
def members_set_role(ctx: click.Context, org_name: str, email: str, role: str) -> None:
    """Change a member's role (an organisation keeps at least one owner)."""
    db = get_db(ctx)
    members_.set_role(db, find_org(db, org_name), email, role, CLI, None)
    click.echo(f"{email} is now {role} of {org_name!r}")


def create_and_print_token(
    ctx: click.Context,
    table: str,
    org_name: str,
    label: str | None,
    as_json: bool,
    role: str | None = None,
) -> None:
    db = get_db(ctx)
    with db.atomic():
        token_id, token = create_token(db, table, find_org(db, org_name), label, CLI, role=role)
    if as_json:
        click.echo(json.dumps({"token_id": token_id, "org": org_name, "token": token}))
    else:
        click.echo(token)


def print_tokens(ctx: click.Context, table: str, org_name: str | None, as_json: bool) -> None:
    db = get_db(ctx)
    org_id = find_org(db, org_name) if org_name is not None else None
    emit(list_tokens(db, table, org_id), as_json)


@click.group()
def tokens() -> None:
    """Monitor tokens: what services send in the X-Monitor-Token header."""


@tokens.command("create")
@click.option("--org", "org_name", required=True, help="Organisation the token belongs to.")
@click.option("--name", "label", help="A label, e.g. the service that will use it.")
@json_option
@click.pass_context
@handle_errors
def tokens_create(ctx: click.Context, org_name: str, label: str | None, as_json: bool) -> None:
    """Create a monitor token and print it (shown only this once; stored as SHA-256)."""
    create_and_print_token(ctx, "monitor_tokens", org_name, label, as_json)


@tokens.command("list")
@click.option("--org", "org_name", help="Only this organisation's tokens.")
@json_option
@click.pass_context
@handle_errors
def tokens_list(ctx: click.Context, org_name: str | None, as_json: bool) -> None:
    """Tokens with their prefix, label, organisation, creation, last use and revocation."""
    print_tokens(ctx, "monitor_tokens", org_name, as_json)


@tokens.command("revoke")
@click.argument("id_or_token")
@click.pass_context
@handle_errors
def tokens_revoke(ctx: click.Context, id_or_token: str) -> None:
    """Revoke a token, by its id (see `tokens list`) or the full token.

    A running proxy stops accepting it within its refresh interval (1 s by default).
    """
    click.echo(revoke_token(get_db(ctx), "monitor_tokens", id_or_token, CLI))


@click.group("dashboard-token")
def dashboard_token() -> None:
    """Bearer tokens for the dashboard's JSON API (one organisation's views, read-only)."""


@dashboard_token.command("create")
@click.option("--org", "org_name", required=True, help="Organisation whose views it reads.")
@click.option("--name", "label", help="A label, e.g. the script that will use it.")
@click.option(
    "--role",
    type=click.Choice(["viewer", "admin"]),
    default="viewer",
    show_default=True,
    help="admin: it may also create and revoke monitor tokens through /api/tokens.",
)
@json_option
@click.pass_context
@handle_errors
def dashboard_token_create(
    ctx: click.Context, org_name: str, label: str | None, role: str, as_json: bool
) -> None:
    """Create a dashboard token and print it (shown only this once; stored as SHA-256).

    Send it as `Authorization: Bearer dash_...` to the JSON views, e.g.
    /llm-monitor/summary.json?period=week.
    """
    create_and_print_token(ctx, "dashboard_tokens", org_name, label, as_json, role)


@dashboard_token.command("list")
@click.option("--org", "org_name", help="Only this organisation's tokens.")
@json_option
@click.pass_context
@handle_errors
def dashboard_token_list(ctx: click.Context, org_name: str | None, as_json: bool) -> None:
    """Dashboard tokens with their prefix, label, organisation, creation, last use and
    revocation (never the token)."""
    print_tokens(ctx, "dashboard_tokens", org_name, as_json)


@dashboard_token.command("revoke")
@click.argument("id_or_token")
@click.pass_context
@handle_errors
def dashboard_token_revoke(ctx: click.Context, id_or_token: str) -> None:
    """Revoke a dashboard token, by its id (see `dashboard-token list`) or the full token.
    It stops working at once."""
    click.echo(revoke_token(get_db(ctx), "dashboard_tokens", id_or_token, CLI))
