"""Organisations and their settings: the operations the CLI, the dashboard and the
API share. Each takes a database and plain values and returns data or raises a
`DomainError`; none prints or prompts."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from llm_monitor.accounts.audit import CLI, Who, record
from llm_monitor.accounts.members import (
    TAKEN_EMAIL,
    add_member,
    check_email,
    create_person,
    find_person,
    require,
    role_of,
)
from llm_monitor.accounts.tokens import create_token
from llm_monitor.errors import Conflict, NotFound
from llm_monitor.inert import check_name, printable
from llm_monitor.usage import utc_timestamp


@dataclass(frozen=True)
class NewOrg:
    org_id: int
    name: str
    token_id: int
    token: str  # the first monitor token, in the clear: show it once, never store it


def find_org(db: Database, name: str) -> int:
    """The id of the (not deleted) organisation named `name`."""
    row = next(db.query("select id from orgs where name = ? and deleted_at is null", [name]), None)
    if row is None:
        raise NotFound(f"no organisation named {printable(name)!r} (see `llm-monitor orgs list`)")
    return row["id"]


def create_org(
    db: Database,
    name: str,
    email: str,
    *,
    password_hash: str | None = None,
    admin: bool = False,
    token_label: str | None = "default",
    who: Who | None = None,
) -> NewOrg:
    """A new organisation with its first monitor token, in one transaction. With a
    password, its email becomes a login (a person) and that person its owner. An email
    that is already someone's login is refused ("cannot use this email")."""
    name = check_name(name, "an organisation name")
    email = check_email(email)
    with db.atomic():
        if db["orgs"].count_where("name = ?", [name]):
            raise Conflict(f"organisation {name!r} already exists")
        if find_person(db, email) is not None:
            raise Conflict(f"{TAKEN_EMAIL}: it is already a login")
        org = {
            "name": name,
            "email": email,
            "created_at": utc_timestamp(time.time()),
            "is_admin": int(admin),
        }
        org_id = db["orgs"].insert(org).last_pk
        who = who or Who(email if password_hash else "cli")
        if password_hash:
            person_id = create_person(db, email, password_hash)
            add_member(db, org_id, person_id, "owner")
        record(db, org_id, who, "org.create", name)
        token_id, token = create_token(db, "monitor_tokens", org_id, token_label, who)
    return NewOrg(org_id, name, token_id, token)


def sign_up(db: Database, name: str, email: str, password_hash: str, who: Who) -> NewOrg:
    """Self-service: a new organisation whose owner is a new login. Whatever makes the
    email unusable, the answer is the same ("cannot use this email")."""
    try:
        return create_org(db, name, email, password_hash=password_hash, who=who)
    except Conflict as e:
        if TAKEN_EMAIL in str(e):
            raise Conflict(TAKEN_EMAIL) from None
        raise


def list_orgs(db: Database) -> list[dict[str, Any]]:
    """Every organisation with its members, admin flag, live tokens and requests."""
    return list(
        db.query("""
        select orgs.id, orgs.name, orgs.email, orgs.created_at,
          (select count(*) from members m where m.org_id = orgs.id) as members,
          orgs.is_admin as admin,
          (select count(*) from monitor_tokens t
            where t.org_id = orgs.id and t.revoked_at is null) as live_tokens,
          (select count(*) from usage where usage.org_id = orgs.id) as requests,
          orgs.deleted_at as deleted
        from orgs order by orgs.deleted_at is not null, orgs.name
    """)
    )


def org_row(db: Database, org_id: int) -> dict[str, Any]:
    row = next(
        db.query(
            "select id, name, email, created_at, is_admin from orgs "
            "where id = ? and deleted_at is null",
            [org_id],
        ),
        None,
    )
    if row is None:
        raise NotFound(f"no organisation {org_id}")
    return row


def set_password(
    db: Database, org_id: int, password_hash: str, *, admin: bool | None = None
) -> str:
    """Set the password of the organisation's login (the person with its email), making
    that person its owner if it had no login yet; optionally its admin flag. Returns the
    email it logs in with. An email that is another organisation's login is refused: give
    this organisation another email first (`orgs set-email`)."""
    with db.atomic():
        email = org_row(db, org_id)["email"]
        person = find_person(db, email)
        if person is None:
            person_id = create_person(db, email, password_hash)
            add_member(db, org_id, person_id, "owner")
        elif role_of(db, org_id, person["id"]) is None:
            raise Conflict(
                f"{email} is already the login of another organisation; give this one "
                "another email with `llm-monitor orgs set-email`"
            )
        else:
            db["people"].update(person["id"], {"password_hash": password_hash})
        if admin is not None:
            db["orgs"].update(org_id, {"is_admin": int(admin)})
        record(db, org_id, CLI, "login.password", email)
    return email


def rename_org(
    db: Database, org_id: int, name: str, who: Who, acting_role: str | None = None
) -> str:
    require(acting_role, "owner", "renaming the organisation")
    name = check_name(name, "an organisation name")
    with db.atomic():
        old = org_row(db, org_id)["name"]
        if name != old and db["orgs"].count_where("name = ?", [name]):
            raise Conflict(f"organisation {name!r} already exists")
        db["orgs"].update(org_id, {"name": name})
        record(db, org_id, who, "org.rename", f"{old} -> {name}")
    return name


def set_org_email(
    db: Database, org_id: int, email: str, who: Who, acting_role: str | None = None
) -> str:
    """Change the organisation's email; its login (the member who logs in with the old
    email) logs in with the new one from now on."""
    require(acting_role, "owner", "changing the login email")
    email = check_email(email)
    with db.atomic():
        old = org_row(db, org_id)["email"]
        person = find_person(db, old)
        other = find_person(db, email)
        if other is not None and (person is None or other["id"] != person["id"]):
            raise Conflict(TAKEN_EMAIL)
        db["orgs"].update(org_id, {"email": email})
        if person is not None and role_of(db, org_id, person["id"]) is not None:
            db["people"].update(person["id"], {"email": email})
        record(db, org_id, who, "org.email", f"{old} -> {email}")
    return email


def delete_org(db: Database, org_id: int, who: Who, acting_role: str | None = None) -> str:
    """Delete an organisation: its tokens revoked, its members' logins to it closed, its
    invitations void. Its usage rows stay, for the instance admin."""
    require(acting_role, "owner", "deleting the organisation")
    now = utc_timestamp(time.time())
    with db.atomic():
        name = org_row(db, org_id)["name"]
        for table in ("monitor_tokens", "dashboard_tokens", "invitations"):
            db.execute(
                f"update {table} set revoked_at = ? where org_id = ? and revoked_at is null",
                [now, org_id],
            )
        db.execute("delete from members where org_id = ?", [org_id])
        db["orgs"].update(org_id, {"deleted_at": now})
        record(db, org_id, who, "org.delete", name)
    return name
