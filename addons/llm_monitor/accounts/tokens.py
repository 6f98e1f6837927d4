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

from llm_monitor.errors import Invalid, NotFound
from llm_monitor.inert import ascii_int, check_name
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


def create_token(db: Database, table: str, org_id: int, label: str | None) -> tuple[int, str]:
    """A new token in `table` (monitor_tokens or dashboard_tokens) for an organisation:
    only its hash and a display prefix are stored. Returns its id and the token."""
    if label is not None:
        label = check_name(label, "a token label")
    token = new_token(TOKEN_TABLES[table][0])
    row = {
        "org_id": org_id,
        "token_hash": hash_token(token),
        "prefix": display_prefix(token),
        "label": label,
        "created_at": utc_timestamp(time.time()),
    }
    return db[table].insert(row).last_pk, token


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


def revoke_token(db: Database, table: str, id_or_token: str) -> str:
    """Revoke a token by its id or the full token; says what happened."""
    prefix, list_command = TOKEN_TABLES[table]
    if (token_id := ascii_int(id_or_token)) is not None:
        where, params = "id = ?", [token_id]
    elif id_or_token.startswith(prefix):
        where, params = "token_hash = ?", [hash_token(id_or_token)]
    else:
        raise Invalid(f"give a token id (a number) or a full {prefix} token")
    row = next(db.query(f"select id, revoked_at from {table} where {where}", params), None)
    if row is None:
        raise NotFound(f"no such token (see `{list_command}`)")
    if row["revoked_at"]:
        return f"token {row['id']} was already revoked at {row['revoked_at']}"
    with db.atomic():
        db[table].update(row["id"], {"revoked_at": utc_timestamp(time.time())})
    return f"revoked token {row['id']}"


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
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def owner(self, token: str | None) -> TokenOwner | None:
        if not token or len(token) > MAX_TOKEN_LENGTH or not token.startswith(PREFIX):
            return None
        return self._owners.get(hash_token(token))

    def __len__(self) -> int:
        return len(self._owners)

    def reload(self) -> None:
        """Read every live token; on failure keep the last good set (the DB may be locked)."""
        try:
            conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=0.5)
            try:
                rows = conn.execute(_LIVE_TOKENS).fetchall()
            finally:
                conn.close()
        except sqlite3.Error as e:
            logger.warning(
                "llm-monitor: could not reload monitor tokens (%s); keeping %d",
                e,
                len(self._owners),
            )
            return
        self._owners = {row[0]: TokenOwner(row[1], row[2]) for row in rows}

    def start(self) -> None:
        self.reload()
        self._thread = threading.Thread(target=self._run, name="llm-monitor-tokens", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_seconds):
            self.reload()
