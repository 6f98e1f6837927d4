"""People, and their membership of organisations with a role.

A person logs in with an email and a password and may belong to several organisations.
Roles, each allowing what the one before allows:

- viewer: reads the organisation's views, tokens and members;
- admin: also creates and revokes tokens, invites, removes and re-roles viewers and admins;
- owner: also names owners, renames, re-emails and deletes the organisation.

An organisation always keeps one owner. `acting_role` is the role of whoever asks through
the dashboard or the API; the server's command line passes None (it may do anything).
"""

from __future__ import annotations

import time
from typing import Any

from sqlite_utils import Database

from llm_monitor.accounts.audit import Who, record
from llm_monitor.errors import Conflict, Forbidden, Invalid, NotFound
from llm_monitor.inert import printable
from llm_monitor.usage import utc_timestamp

ROLES = ("viewer", "admin", "owner")
TAKEN_EMAIL = "cannot use this email"  # never says whether, or by whom, it is used


def check_role(role: str) -> str:
    if role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}; got {printable(role)[:40]!r}")
    return role


def allows(role: str | None, needed: str) -> bool:
    """Whether `role` (None: the server's command line) may do what `needed` may."""
    return role is None or (role in ROLES and ROLES.index(role) >= ROLES.index(needed))


def require(role: str | None, needed: str, what: str) -> None:
    if not allows(role, needed):
        raise Forbidden(f"{what} needs the {needed} role; you are {role}")


def check_email(email: str) -> str:
    email = email.strip()
    local, at, domain = email.rpartition("@")
    if not (local and at and "." in domain) or len(email) > 320 or not email.isprintable():
        raise Invalid(f"{printable(email)[:80]!r} is not an email address")
    if any(c.isspace() for c in email):
        raise Invalid(f"{printable(email)[:80]!r} is not an email address")
    return email


def find_person(db: Database, email: str) -> dict[str, Any] | None:
    return next(
        db.query(
            "select id, email, password_hash from people where email = ? collate nocase",
            [email.strip()],
        ),
        None,
    )


def create_person(db: Database, email: str, password_hash: str) -> int:
    """A new login. An email already used gets "cannot use this email", never more."""
    email = check_email(email)
    if find_person(db, email) is not None:
        raise Conflict(TAKEN_EMAIL)
    row = {"email": email, "password_hash": password_hash, "created_at": utc_timestamp(time.time())}
    return db["people"].insert(row).last_pk


def role_of(db: Database, org_id: int, person_id: int) -> str | None:
    row = next(
        db.query(
            "select m.role from members m join orgs o on o.id = m.org_id "
            "where m.org_id = ? and m.person_id = ? and o.deleted_at is null",
            [org_id, person_id],
        ),
        None,
    )
    return row["role"] if row else None


def add_member(db: Database, org_id: int, person_id: int, role: str) -> None:
    check_role(role)
    if role_of(db, org_id, person_id) is not None:
        raise Conflict("already a member of this organisation")
    db["members"].insert(
        {
            "org_id": org_id,
            "person_id": person_id,
            "role": role,
            "created_at": utc_timestamp(time.time()),
        }
    )


def orgs_of(db: Database, person_id: int) -> list[dict[str, Any]]:
    """The organisations a person belongs to, with their role in each."""
    return list(
        db.query(
            "select o.id as org_id, o.name, m.role from members m join orgs o on o.id = m.org_id "
            "where m.person_id = ? and o.deleted_at is null order by o.name",
            [person_id],
        )
    )


def list_members(db: Database, org_id: int) -> list[dict[str, Any]]:
    return list(
        db.query(
            "select p.id as person_id, p.email, m.role, m.created_at from members m "
            "join people p on p.id = m.person_id where m.org_id = ? "
            "order by case m.role when 'owner' then 0 when 'admin' then 1 else 2 end, p.email",
            [org_id],
        )
    )


def find_member(db: Database, org_id: int, email_or_id: str | int) -> dict[str, Any]:
    """A member by email or person id."""
    if isinstance(email_or_id, int) or str(email_or_id).isdigit():
        where, value = "p.id = ?", int(email_or_id)
    else:
        where, value = "p.email = ? collate nocase", str(email_or_id).strip()
    row = next(
        db.query(
            "select p.id as person_id, p.email, m.role from members m "
            f"join people p on p.id = m.person_id where m.org_id = ? and {where}",
            [org_id, value],
        ),
        None,
    )
    if row is None:
        raise NotFound(f"no member {printable(str(email_or_id))[:80]!r} in this organisation")
    return row


def _owners(db: Database, org_id: int) -> int:
    return db["members"].count_where("org_id = ? and role = 'owner'", [org_id])


def _check_may_change(acting_role: str | None, member_role: str, new_role: str | None) -> None:
    """Admins manage viewers and admins; only owners touch owners or make one."""
    require(acting_role, "admin", "managing members")
    if "owner" in (member_role, new_role):
        require(acting_role, "owner", "changing an owner, or making one")


def set_role(
    db: Database,
    org_id: int,
    email_or_id: str | int,
    role: str,
    who: Who,
    acting_role: str | None,
) -> dict[str, Any]:
    """Change a member's role; takes effect on their next request."""
    check_role(role)
    with db.atomic():
        member = find_member(db, org_id, email_or_id)
        _check_may_change(acting_role, member["role"], role)
        if member["role"] == "owner" and role != "owner" and _owners(db, org_id) == 1:
            raise Conflict("an organisation keeps one owner: make another member owner first")
        db.execute(
            "update members set role = ? where org_id = ? and person_id = ?",
            [role, org_id, member["person_id"]],
        )
        record(db, org_id, who, "member.role", f"{member['email']}: {member['role']} -> {role}")
    return {**member, "role": role}


def remove_member(
    db: Database, org_id: int, email_or_id: str | int, who: Who, acting_role: str | None
) -> dict[str, Any]:
    """Remove a member; their sessions for this organisation end on their next request."""
    with db.atomic():
        member = find_member(db, org_id, email_or_id)
        _check_may_change(acting_role, member["role"], None)
        if member["role"] == "owner" and _owners(db, org_id) == 1:
            raise Conflict("an organisation keeps one owner: make another member owner first")
        db.execute(
            "delete from members where org_id = ? and person_id = ?",
            [org_id, member["person_id"]],
        )
        record(db, org_id, who, "member.remove", member["email"])
    return member
