"""Monitor tokens: how they are made and stored, and the in-memory index the proxy checks.

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
from dataclasses import dataclass
from pathlib import Path

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
