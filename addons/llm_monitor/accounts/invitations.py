"""Invitations: one-time links that make their holder a member with a given role.

Shown once (stored as SHA-256, as tokens are), valid for `VALID_DAYS`, revocable, and
spent by the first person who accepts."""

from __future__ import annotations

import time
from typing import Any

from sqlite_utils import Database

from llm_monitor.accounts.audit import Who, record
from llm_monitor.accounts.members import add_member, check_role, require, role_of
from llm_monitor.accounts.tokens import MAX_TOKEN_LENGTH, display_prefix, hash_token, new_token
from llm_monitor.errors import Conflict, NotFound
from llm_monitor.usage import utc_timestamp

PREFIX = "inv_"
VALID_DAYS = 7
NOT_VALID = "this invitation is not valid: it was used, revoked, or it expired"


def create_invitation(
    db: Database, org_id: int, role: str, who: Who, acting_role: str | None
) -> tuple[int, str]:
    """A new invitation; returns its id and its secret (shown once, put in the link)."""
    check_role(role)
    require(acting_role, "owner" if role == "owner" else "admin", f"inviting an {role}")
    token = new_token(PREFIX)
    now = time.time()
    row = {
        "org_id": org_id,
        "token_hash": hash_token(token),
        "prefix": display_prefix(token),
        "role": role,
        "created_by": who.label,
        "created_at": utc_timestamp(now),
        "expires_at": utc_timestamp(now + VALID_DAYS * 86400),
    }
    with db.atomic():
        invitation_id = db["invitations"].insert(row).last_pk
        record(db, org_id, who, "invitation.create", f"#{invitation_id} as {role}")
    return invitation_id, token


def list_invitations(db: Database, org_id: int) -> list[dict[str, Any]]:
    """Invitations not yet accepted, revoked or expired."""
    return list(
        db.query(
            "select id, prefix, role, created_by, created_at, expires_at from invitations "
            "where org_id = ? and accepted_at is null and revoked_at is null "
            "and expires_at > ? order by id",
            [org_id, utc_timestamp(time.time())],
        )
    )


def revoke_invitation(
    db: Database, org_id: int, invitation_id: int, who: Who, acting_role: str | None
) -> None:
    require(acting_role, "admin", "revoking an invitation")
    with db.atomic():
        row = next(
            db.query(
                "select id from invitations where id = ? and org_id = ? "
                "and accepted_at is null and revoked_at is null",
                [invitation_id, org_id],
            ),
            None,
        )
        if row is None:
            raise NotFound(f"no pending invitation {invitation_id}")
        db["invitations"].update(invitation_id, {"revoked_at": utc_timestamp(time.time())})
        record(db, org_id, who, "invitation.revoke", f"#{invitation_id}")


def find_invitation(db: Database, token: str) -> dict[str, Any]:
    """The pending invitation with this secret, and its organisation's name."""
    if not token.startswith(PREFIX) or len(token) > MAX_TOKEN_LENGTH:
        raise NotFound(NOT_VALID)
    row = next(
        db.query(
            "select i.id, i.org_id, i.role, i.expires_at, o.name as org from invitations i "
            "join orgs o on o.id = i.org_id where i.token_hash = ? and i.accepted_at is null "
            "and i.revoked_at is null and i.expires_at > ? and o.deleted_at is null",
            [hash_token(token), utc_timestamp(time.time())],
        ),
        None,
    )
    if row is None:
        raise NotFound(NOT_VALID)
    return row


def accept_invitation(db: Database, token: str, person_id: int, who: Who) -> dict[str, Any]:
    """Make the person a member with the invitation's role; the invitation is spent."""
    with db.atomic():
        invitation = find_invitation(db, token)
        if role_of(db, invitation["org_id"], person_id) is not None:
            raise Conflict(f"you are already a member of {invitation['org']}")
        add_member(db, invitation["org_id"], person_id, invitation["role"])
        db["invitations"].update(
            invitation["id"],
            {"accepted_at": utc_timestamp(time.time()), "accepted_by": person_id},
        )
        record(
            db,
            invitation["org_id"],
            who,
            "member.join",
            f"{who.label} as {invitation['role']} (invitation #{invitation['id']})",
        )
    return invitation
