"""The audit log of each organisation: who did what, when and from where.

Every domain operation that changes an organisation's logins, members, tokens or settings
records one line here; owners and admins read it (dashboard, `/-/account/audit`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from llm_monitor.usage import utc_timestamp

MAX_DETAIL = 500


@dataclass(frozen=True)
class Who:
    """Who acts: a person's email (or "cli" for the server's command line), their person
    id if any, and the address the request came from."""

    label: str
    person_id: int | None = None
    address: str | None = None


CLI = Who("cli")


def record(db: Database, org_id: int, who: Who, action: str, detail: str = "") -> None:
    db["audit_log"].insert(
        {
            "org_id": org_id,
            "ts": utc_timestamp(time.time()),
            "who": who.label,
            "action": action,
            "detail": detail[:MAX_DETAIL],
            "address": who.address,
        }
    )


def list_events(db: Database, org_id: int, limit: int = 200) -> list[dict[str, Any]]:
    """The organisation's latest events, newest first."""
    return list(
        db.query(
            "select id, ts, who, action, detail, address from audit_log where org_id = ? "
            "order by id desc limit ?",
            [org_id, limit],
        )
    )
