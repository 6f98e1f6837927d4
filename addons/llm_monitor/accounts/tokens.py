"""Monitor and dashboard tokens: how they are made, stored, listed and revoked, and the
in-memory index the proxy checks.

A token is shown once and stored only as its SHA-256. The proxy never reads the disk to
check a token: `TokenIndex` keeps every live token's hash in memory and a background thread
reloads it every `refresh_seconds`, so a revoked token stops working within that time.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from llm_monitor.accounts.audit import Who, record
from llm_monitor.errors import Invalid, NotFound
from llm_monitor.inert import ascii_int, check_name
from llm_monitor.readonly import ReadOnlyConnection
from llm_monitor.usage import utc_timestamp

PREFIX = "mon_"
DASHBOARD_PREFIX = "dash_"  # bearer tokens for the dashboard's JSON API, never for the proxy
MAX_TOKEN_LENGTH = 200  # a longer header is no token of ours; don't even hash it

logger = logging.getLogger(__name__)


def new_token(prefix: str = PREFIX) -> str:
    """`mon_` (or `prefix`) and 43 URL-safe characters (256 random bits)."""
    return prefix + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", errors="surrogateescape")).hexdigest()


def display_prefix(token: str) -> str:
    """What lists show of a token: enough to recognise it, far too little to use it."""
    return token[: token.find("_") + 7]


# Token table: (prefix of its tokens, the command that lists them).
TOKEN_TABLES = {
    "monitor_tokens": (PREFIX, "llm-monitor tokens list"),
    "dashboard_tokens": (DASHBOARD_PREFIX, "llm-monitor dashboard-token list"),
}


def create_token(
    db: Database,
    table: str,
    org_id: int,
    label: str | None,
    who: Who | None = None,
    *,
    role: str | None = None,
) -> tuple[int, str]:
    """A new token in `table` (monitor_tokens or dashboard_tokens) for an organisation:
    only its hash and a display prefix are stored. Returns its id and the token. With
    `who`, it is recorded in the audit log (and, for a monitor token, as its creator); a
    dashboard token acts with `role` (viewer unless said)."""
    if label is not None:
        label = check_name(label, "a token label")
    token = new_token(TOKEN_TABLES[table][0])
    row: dict[str, Any] = {
        "org_id": org_id,
        "token_hash": hash_token(token),
        "prefix": display_prefix(token),
        "label": label,
        "created_at": utc_timestamp(time.time()),
    }
    if table == "monitor_tokens" and who is not None:
        row["created_by"] = who.label
    if table == "dashboard_tokens" and role is not None:
        row["role"] = role
    token_id = db[table].insert(row).last_pk
    if who is not None:
        kind = "token" if table == "monitor_tokens" else "dashboard_token"
        record(db, org_id, who, f"{kind}.create", f"#{token_id} {row['prefix']} {label or ''}")
    return token_id, token


def list_tokens(db: Database, table: str, org_id: int | None = None) -> list[dict[str, Any]]:
    """Tokens (all, or one organisation's) with prefix, label, organisation and dates;
    never their hashes."""
    where, params = ("where t.org_id = ?", [org_id]) if org_id is not None else ("", [])
    sql = f"""
        select t.id, t.prefix, t.label, orgs.name as org, t.created_at, t.last_used_at,
          t.revoked_at
        from {table} t join orgs on orgs.id = t.org_id {where} order by t.id
    """
    return list(db.query(sql, params))


def revoke_token(
    db: Database,
    table: str,
    id_or_token: str,
    who: Who | None = None,
    *,
    org_id: int | None = None,
) -> str:
    """Revoke a token by its id or the full token (only one of `org_id`'s when given);
    says what happened, and records it in the audit log."""
    prefix, list_command = TOKEN_TABLES[table]
    if (token_id := ascii_int(id_or_token)) is not None:
        where, params = "id = ?", [token_id]
    elif id_or_token.startswith(prefix):
        where, params = "token_hash = ?", [hash_token(id_or_token)]
    else:
        raise Invalid(f"give a token id (a number) or a full {prefix} token")
    if org_id is not None:
        where, params = f"{where} and org_id = ?", [*params, org_id]
    sql = f"select id, org_id, prefix, revoked_at from {table} where {where}"
    row = next(db.query(sql, params), None)
    if row is None:
        raise NotFound(f"no such token (see `{list_command}`)")
    if row["revoked_at"]:
        return f"token {row['id']} was already revoked at {row['revoked_at']}"
    with db.atomic():
        db[table].update(row["id"], {"revoked_at": utc_timestamp(time.time())})
        kind = "token" if table == "monitor_tokens" else "dashboard_token"
        record(
            db, row["org_id"], who or Who("cli"), f"{kind}.revoke", f"#{row['id']} {row['prefix']}"
        )
    return f"revoked token {row['id']}"


def token_report(db: Database, org_id: int) -> list[dict[str, Any]]:
    """An organisation's monitor tokens, live first, with who made them and their requests
    and cost over the last 30 days (cost None when some were unpriced and none priced:
    never a guessed $0)."""
    return list(
        db.query(
            """
            select t.id, t.prefix, t.label, t.created_by, t.created_at, t.last_used_at,
              t.revoked_at,
              coalesce(sum(h.requests), 0) as requests_30d,
              case when coalesce(sum(h.unpriced), 0) = 0 or sum(h.cost_usd) > 0
                then round(coalesce(sum(h.cost_usd), 0), 6) end as cost_usd_30d
            from monitor_tokens t
            left join usage_hourly h on h.org_id = t.org_id and h.token_id = t.id
              and h.hour >= strftime('%Y-%m-%dT%H', 'now', '-30 days')
            where t.org_id = ?
            group by t.id
            order by t.revoked_at is not null, t.id
            """,
            [org_id],
        )
    )


@dataclass(frozen=True, slots=True)
class TokenOwner:
    token_id: int
    org_id: int


_LIVE_TOKENS = """
select monitor_tokens.token_hash, monitor_tokens.id, monitor_tokens.org_id
from monitor_tokens join orgs on orgs.id = monitor_tokens.org_id
where monitor_tokens.revoked_at is null
"""


class TokenIndex:
    def __init__(self, db_path: str | Path, refresh_seconds: float = 1.0) -> None:
        self.db_path = str(db_path)
        self.refresh_seconds = refresh_seconds
        self._owners: dict[str, TokenOwner] = {}
        self._reader = ReadOnlyConnection(db_path)
        self._seen: tuple[Any, ...] | None = None  # the tokens' change version last read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def owner(self, token: str | None) -> TokenOwner | None:
        if not token or len(token) > MAX_TOKEN_LENGTH or not token.startswith(PREFIX):
            return None
        return self._owners.get(hash_token(token))

    def __len__(self) -> int:
        return len(self._owners)

    def reload(self) -> None:
        """Read every live token, when they changed since the last read (`change_versions`);
        on failure keep the last good set (the DB may be locked)."""
        try:
            with self._reader.reading() as conn:
                seen = self._reader.version(conn, "tokens")
                if seen is not None and seen == self._seen:
                    return
                rows = conn.execute(_LIVE_TOKENS).fetchall()
        except sqlite3.Error as e:
            logger.warning(
                "llm-monitor: could not reload monitor tokens (%s); keeping %d",
                e,
                len(self._owners),
            )
            return
        self._owners = {row[0]: TokenOwner(row[1], row[2]) for row in rows}
        self._seen = seen

    def start(self) -> None:
        self.reload()
        self._thread = threading.Thread(target=self._run, name="llm-monitor-tokens", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._reader.close()

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_seconds):
            self.reload()
