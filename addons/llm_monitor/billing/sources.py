"""The sources `billing sync` runs: each API import remembers its provider, team and base
URL (and the path of its key file, if one was given: never the key), so that cron, or
`up`, can run them all again.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlite_utils import Database

from llm_monitor.billing import anthropic, ledger, openai, reconcile, xai
from llm_monitor.billing.feeds import ImportReport, ProgressFactory
from llm_monitor.errors import DomainError, Invalid

PROVIDERS = ("openai", "anthropic", "xai")
KEY_ENVS = {"openai": openai.KEY_ENV, "anthropic": anthropic.KEY_ENV, "xai": xai.KEY_ENV}
BASE_URLS = {
    "openai": openai.DEFAULT_BASE_URL,
    "anthropic": anthropic.DEFAULT_BASE_URL,
    "xai": xai.DEFAULT_BASE_URL,
}
_TEAM = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


@dataclass(frozen=True, slots=True)
class Source:
    name: str
    provider: str
    team_id: str | None
    base_url: str
    key_file: str | None


def read_key(
    provider: str, key_file: str | Path | None, environ: Mapping[str, str] = os.environ
) -> str:
    """The admin key: from --key-file if given, else the provider's environment variable."""
    if key_file is not None:
        try:
            key = Path(key_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise Invalid(f"--key-file {key_file}: {e.strerror}") from None
        if not key:
            raise Invalid(f"--key-file {key_file} is empty")
        return key
    key = environ.get(KEY_ENVS[provider], "").strip()
    if not key:
        raise Invalid(f"no {provider} admin key: set {KEY_ENVS[provider]} or give --key-file")
    return key


def check_team(team_id: str) -> str:
    if not _TEAM.match(team_id):
        raise Invalid(f"--team {team_id!r} is not an xAI team id")
    return team_id


def remember(
    db: Database,
    provider: str,
    *,
    team_id: str | None = None,
    base_url: str | None = None,
    key_file: str | Path | None = None,
) -> Source:
    name = f"xai:{team_id}" if provider == "xai" else provider
    source = Source(
        name,
        provider,
        team_id,
        base_url or BASE_URLS[provider],
        str(Path(key_file).resolve()) if key_file else None,
    )
    db["billing_sources"].upsert(
        {
            "name": source.name,
            "provider": provider,
            "team_id": team_id,
            "base_url": source.base_url,
            "key_file": source.key_file,
            "last_run_at": ledger.now_timestamp(),
        },
        pk="name",
    )
    return source


def configured(db: Database) -> list[Source]:
    return [
        Source(r["name"], r["provider"], r["team_id"], r["base_url"], r["key_file"])
        for r in db.query("select * from billing_sources order by name")
    ]


def run_import(
    db: Database,
    provider: str,
    key: str,
    *,
    team_id: str | None = None,
    base_url: str | None = None,
    since: dt.date | None = None,
    today: dt.date | None = None,
    progress: ProgressFactory | None = None,
) -> ImportReport:
    base_url = base_url or BASE_URLS[provider]
    if provider == "openai":
        return openai.import_openai(
            db, key, base_url=base_url, since=since, today=today, progress=progress
        )
    if provider == "anthropic":
        return anthropic.import_anthropic(
            db, key, base_url=base_url, since=since, today=today, progress=progress
        )
    if provider == "xai":
        if not team_id:
            raise Invalid("xai needs --team TEAM_ID")
        return xai.import_xai(
            db,
            key,
            check_team(team_id),
            base_url=base_url,
            since=since,
            today=today,
            progress=progress,
        )
    raise Invalid(f"unknown provider {provider!r}; one of {', '.join(PROVIDERS)}")


@dataclass(frozen=True, slots=True)
class SyncResult:
    source: str
    report: ImportReport | None
    skipped: str | None


def sync(
    db: Database,
    *,
    environ: Mapping[str, str] = os.environ,
    progress_for: Callable[[str], ProgressFactory] | None = None,
    today: dt.date | None = None,
    reconcile_days: int = ledger.DEFAULT_DAYS,
) -> list[SyncResult]:
    """Every remembered source from where it got to (the trailing window re-pulled), then
    the reconciliation of the last `reconcile_days` days, kept for the dashboard. A source
    without its key is skipped and said so; a failing one does not stop the others."""
    today = today or ledger.utc_today()
    results = []
    for source in configured(db):
        try:
            key = read_key(source.provider, source.key_file, environ)
        except Invalid as e:
            results.append(SyncResult(source.name, None, str(e)))
            continue
        try:
            report = run_import(
                db,
                source.provider,
                key,
                team_id=source.team_id,
                base_url=source.base_url,
                today=today,
                progress=progress_for(source.name) if progress_for else None,
            )
        except (DomainError, sqlite3.Error) as e:  # one provider down must not stop the others
            results.append(SyncResult(source.name, None, str(e)))
            continue
        remember(
            db,
            source.provider,
            team_id=source.team_id,
            base_url=source.base_url,
            key_file=source.key_file,
        )
        results.append(SyncResult(source.name, report, None))
    reconcile.refresh(db, today - dt.timedelta(days=reconcile_days), today)
    return results
