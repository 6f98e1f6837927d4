"""Organisations and their dashboard logins: the operations the CLI, the dashboard and the
API share. Each takes a database and plain values and returns data or raises a
`DomainError`; none prints or prompts."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from llm_monitor.accounts.tokens import create_token
from llm_monitor.errors import Conflict, DomainError, NotFound
from llm_monitor.inert import check_name, printable
from llm_monitor.usage import utc_timestamp


@dataclass(frozen=True)
class NewOrg:
    org_id: int
    name: str
    token_id: int
    token: str  # the first monitor token, in the clear: show it once, never store it


def find_org(db: Database, name: str) -> int:
    """The id of the organisation named `name`."""
    row = next(db.query("select id from orgs where name = ?", [name]), None)
    if row is None:
        raise NotFound(f"no organisation named {printable(name)!r} (see `llm-monitor orgs list`)")
    return row["id"]


def check_login_email_free(db: Database, email: str, org_id: int | None) -> None:
    """A login email names one organisation: refuse a second one with a password."""
    other = next(
        db.query(
            "select name from orgs where email = ? collate nocase and password_hash is not null "
            "and id is not ?",
            [email, org_id],
        ),
        None,
    )
    if other is not None:
        raise Conflict(
            f"{email} is already the dashboard login of {other['name']!r}; "
            "give this organisation another email"
        )


def create_org(
    db: Database,
    name: str,
    email: str,
    *,
    password_hash: str | None = None,
    admin: bool = False,
    token_label: str | None = "default",
) -> NewOrg:
    """A new organisation with its first monitor token, in one transaction."""
    name = check_name(name, "an organisation name")
    email = email.strip()
    if "@" not in email or len(email) > 320 or not email.isprintable():
        raise DomainError(f"{printable(email)!r} is not an email address")
    with db.atomic():
        if db["orgs"].count_where("name = ?", [name]):
            raise Conflict(f"organisation {name!r} already exists")
        if password_hash:
            check_login_email_free(db, email, None)
        org = {
            "name": name,
            "email": email,
            "created_at": utc_timestamp(time.time()),
            "password_hash": password_hash,
            "is_admin": int(admin),
        }
        org_id = db["orgs"].insert(org).last_pk
        token_id, token = create_token(db, "monitor_tokens", org_id, token_label)
    return NewOrg(org_id, name, token_id, token)


def list_orgs(db: Database) -> list[dict[str, Any]]:
    """Every organisation with its login, admin flag, live tokens and requests."""
    return list(
        db.query("""
        select orgs.id, orgs.name, orgs.email, orgs.created_at,
          orgs.password_hash is not null as login, orgs.is_admin as admin,
          (select count(*) from monitor_tokens t
            where t.org_id = orgs.id and t.revoked_at is null) as live_tokens,
          (select count(*) from usage where usage.org_id = orgs.id) as requests
        from orgs order by orgs.name
    """)
    )


def set_password(
    db: Database, org_id: int, password_hash: str, *, admin: bool | None = None
) -> str:
    """Set an organisation's login password (and optionally its admin flag); returns the
    email it logs in with."""
    with db.atomic():
        email = db["orgs"].get(org_id)["email"]
        check_login_email_free(db, email, org_id)
        changes: dict[str, Any] = {"password_hash": password_hash}
        if admin is not None:
            changes["is_admin"] = int(admin)
        db["orgs"].update(org_id, changes)
    return email
