"""Where alerts go: each organisation's Apprise URLs (Slack, Teams, email, Discord, ntfy,
json:// webhooks...), and sending to them.

The URLs hold secrets (webhook paths, passwords), so they are not kept in the database,
which the dashboard serves: they live in a JSON file of their own, next to it by default
(`<db>.notify.json`, or `LLM_MONITOR_NOTIFY_FILE`), created readable by its owner only and
refused when anyone else may read it. Lists show a redacted form; logs never show them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from llm_monitor.errors import Conflict, DomainError, Invalid, NotFound
from llm_monitor.usage import utc_timestamp

NOTIFY_FILE_ENV = "LLM_MONITOR_NOTIFY_FILE"
logger = logging.getLogger(__name__)


def notify_path(db_path: str | Path) -> Path:
    override = os.environ.get(NOTIFY_FILE_ENV)
    return Path(override) if override else Path(f"{db_path}.notify.json")


def redacted(url: str) -> str:
    """`slack://T0…`, `json://127.0.0.1:8080/…`: the service and where, never the secret."""
    parts = urlsplit(url)
    where = parts.netloc.rpartition("@")[2]  # never a user or password
    if parts.scheme in ("json", "jsons", "form", "forms", "xml", "xmls") and where:
        return f"{parts.scheme}://{where}/…"
    return f"{parts.scheme}://{where[:2]}…"


def check_url(url: str) -> None:
    """Invalid unless Apprise can send to `url` (it is parsed, not contacted)."""
    import apprise

    url = url.strip()
    if not url or len(url) > 2000 or not apprise.Apprise().add(url):
        raise Invalid("not a notification URL Apprise can use (see its list of services)")


@dataclass(frozen=True, slots=True)
class Target:
    id: int
    org_id: int
    url: str

    @property
    def shown(self) -> str:
        return redacted(self.url)


class NotifyFile:
    """The notification URLs, in one JSON file only its owner may read."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _read(self) -> dict[str, Any]:
        try:
            mode = self.path.stat().st_mode
        except FileNotFoundError:
            return {"next_id": 1, "targets": []}
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise DomainError(
                f"{self.path} may be read by others (mode {stat.S_IMODE(mode):o}); it holds "
                f"notification secrets: chmod 600 {self.path}"
            )
        return json.loads(self.path.read_text(encoding="utf-8"))

    def _write(self, data: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".notify-")  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The file's contents, for a change written before the lock is let go: the CLI
        and the dashboard may change it at once, and neither may lose the other's."""
        lock_path = self.path.with_name(f".{self.path.name}.lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self._read()
        finally:
            os.close(fd)  # closing lets the lock go

    def targets(self, org_id: int | None = None) -> list[Target]:
        return [
            Target(t["id"], t["org_id"], t["url"])
            for t in self._read()["targets"]
            if org_id is None or t["org_id"] == org_id
        ]

    def add(self, org_id: int, url: str) -> int:
        url = url.strip()
        check_url(url)
        with self._locked() as data:
            if any(t["org_id"] == org_id and t["url"] == url for t in data["targets"]):
                raise Conflict("this organisation has that notification URL already")
            target_id = data["next_id"]
            data["next_id"] += 1
            added_at = utc_timestamp(time.time())
            data["targets"].append(
                {"id": target_id, "org_id": org_id, "url": url, "added_at": added_at}
            )
            self._write(data)
        return target_id

    def remove(self, target_id: int, org_id: int | None = None) -> None:
        """Remove URL `target_id`; given `org_id`, only if it is that organisation's."""
        with self._locked() as data:
            kept = [
                t
                for t in data["targets"]
                if t["id"] != target_id or (org_id is not None and t["org_id"] != org_id)
            ]
            if len(kept) == len(data["targets"]):
                raise NotFound(f"no notification URL {target_id} (see `llm-monitor notify list`)")
            data["targets"] = kept
            self._write(data)

    def listing(self, org_names: dict[int, str], org_id: int | None = None) -> list[dict]:
        return [
            {"id": t.id, "org": org_names.get(t.org_id), "url": t.shown}
            for t in self.targets(org_id)
        ]


def send(target: Target, title: str, body: str) -> str | None:
    """Send one notification; None when it went, else why not (without the URL)."""
    import apprise

    logging.getLogger("apprise").setLevel(logging.CRITICAL)  # its messages name the URL
    sender = apprise.Apprise()
    if not sender.add(target.url):
        return "not a usable Apprise URL"
    try:
        ok = sender.notify(title=title, body=body)
    except Exception as e:  # a plugin's own failure: retried like any other
        return f"{type(e).__name__}"
    return None if ok else f"{target.shown} did not accept it"
