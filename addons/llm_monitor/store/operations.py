"""Operating a deployment: a consistent backup while the proxy writes, pruning raw rows
while the rollups keep their sums, and the database's part of `llm-monitor doctor`."""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sqlite_utils import Database

from llm_monitor.errors import Conflict, Invalid
from llm_monitor.money.sync import freshness
from llm_monitor.store.database import migrations, open_db
from llm_monitor.store.recorder import spool_path_for
from llm_monitor.store.rollups import PRUNED_TABLE


@dataclass(frozen=True)
class Backup:
    path: Path
    usage_rows: int
    bytes: int


def backup(db_path: str | Path, target: str | Path) -> Backup:
    """Copy the database to `target` with SQLite's online backup API, in one step: the copy
    is the database as of one transaction, whatever the proxy writes meanwhile."""
    target = Path(target)
    if target.exists():
        raise Conflict(f"{target} exists; give a new file")
    if not target.parent.is_dir():
        raise Invalid(f"no directory {target.parent} for the backup")
    source = sqlite3.connect(f"file:{Path(db_path)}?mode=ro", uri=True, timeout=30)
    copy = sqlite3.connect(str(target))
    try:
        source.backup(copy)  # pages=-1: all at once, under one read transaction
        copy.execute("pragma journal_mode=delete")  # a single self-contained file
        rows = copy.execute("select count(*) from usage").fetchone()[0]
    finally:
        copy.close()
        source.close()
    return Backup(target, rows, target.stat().st_size)


@dataclass(frozen=True)
class Pruned:
    before: str
    rows: int


def parse_day(value: str) -> str:
    """A `YYYY-MM-DD` day (UTC), as rollups bucket by whole days and hours."""
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise Invalid(f"{value!r} is not a day as YYYY-MM-DD") from None


def pruned_before(db: Database) -> str:
    """The day before which `usage` has been pruned ('' when never)."""
    if PRUNED_TABLE not in db.table_names():
        return ""
    row = db.execute(f"select max(before) from {PRUNED_TABLE}").fetchone()
    return row[0] or ""


def prune(db: Database, before: str, *, dry_run: bool = False) -> Pruned:
    """Delete the raw `usage` rows of days before `before`. The rollups (hourly, daily,
    labels, latency), which the dashboard and the totals read, keep those days' sums; a
    later rebuild of the rollups (repricing) never goes back before the pruned day."""
    day = parse_day(before)
    if day > dt.datetime.now(dt.UTC).date().isoformat():
        raise Invalid(f"{day} is in the future: prune only days that are over")
    count = db.execute("select count(*) from usage where ts < ?", [day]).fetchone()[0]
    if dry_run:
        return Pruned(day, count)
    with db.atomic():
        db.execute("delete from usage where ts < ?", [day])
        if PRUNED_TABLE not in db.table_names():
            db.execute(f"create table {PRUNED_TABLE} (before text not null)")
        if day > pruned_before(db):
            db.execute(f"delete from {PRUNED_TABLE}")
            db.execute(f"insert into {PRUNED_TABLE} (before) values (?)", [day])
    return Pruned(day, count)


@dataclass(frozen=True)
class Check:
    ok: bool
    what: str
    fix: str = ""


def _price_freshness(db: Database) -> list[Check]:
    """Whether the table has what the installed genai-prices has, and whether that
    release knows of any price change in the last half year."""
    today = dt.datetime.now(dt.UTC).date()
    found = freshness(db, today)
    checks = [
        Check(True, f"prices current with the installed {found.source}")
        if not found.pending
        else Check(
            False,
            f"the installed {found.source} has {found.pending} prices the table lacks or "
            "states differently",
            "review and apply them: `llm-monitor pricing sync`",
        )
    ]
    if found.stale(today):
        checks.append(
            Check(
                False,
                f"prices may be stale: the newest price change {found.source} knows of "
                f"is from {found.newest_change}",
                "raise genai-prices' pin in pyproject.toml, reinstall, then "
                "`llm-monitor pricing sync`",
            )
        )
    return checks


def database_checks(db_path: str | Path) -> list[Check]:
    """The database's health: there, migrated, writable, with tokens and prices, and
    nothing spooled. Never changes the database."""
    path = Path(db_path)
    if not path.exists():
        return [Check(False, f"no database at {path}", "run `llm-monitor init`")]
    checks = []
    try:
        db = open_db(path, migrate=False, busy_timeout_ms=2000)
    except sqlite3.Error as e:
        return [Check(False, f"{path} cannot be opened: {e}", "check the file and its rights")]
    try:
        try:
            pending = [m.name for m in migrations.pending(db)]
        except sqlite3.Error:
            pending = ["?"]
        if pending:
            checks.append(
                Check(
                    False,
                    f"schema not current ({len(pending)} migrations pending)",
                    "run `llm-monitor init` (the proxy also upgrades it when it starts)",
                )
            )
        else:
            checks.append(Check(True, f"{path}: schema current"))
        try:
            db.execute("begin immediate")
            db.execute("rollback")
            checks.append(Check(True, "database writable"))
        except sqlite3.Error as e:
            checks.append(
                Check(
                    False,
                    f"database not writable: {e}",
                    "give the proxy's user write "
                    "access to the file and its directory (WAL needs both)",
                )
            )
        if pending:
            return checks
        tokens = db.execute(
            "select count(*) from monitor_tokens where revoked_at is null"
        ).fetchone()[0]
        checks.append(
            Check(True, f"{tokens} monitor tokens")
            if tokens
            else Check(
                False,
                "no monitor token: every request gets 401",
                "create one: `llm-monitor orgs create NAME --email ...`",
            )
        )
        prices = db.execute("select count(*) from prices").fetchone()[0]
        checks.append(
            Check(True, f"{prices} prices loaded")
            if prices
            else Check(False, "no prices: every cost is NULL", "run `llm-monitor init`")
        )
        checks += _price_freshness(db)
        week = (dt.datetime.now(dt.UTC) - dt.timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%S")
        unpriced = db.execute(
            "select count(*), count(distinct provider || '/' || coalesce(model, '')) from usage "
            "where ts >= ? and unpriced_reason = 'no_price'",
            [week],
        ).fetchone()
        checks.append(
            Check(True, "every request of the last 7 days had a price")
            if not unpriced[0]
            else Check(
                False,
                f"{unpriced[0]} requests of the last 7 days ({unpriced[1]} models) had no price",
                "see `llm-monitor pricing check`; add the prices, then `pricing reprice`",
            )
        )
    finally:
        db.conn.close()
    spool = spool_path_for(path)
    if spool.exists() and spool.stat().st_size:
        checks.append(
            Check(
                False,
                f"{spool} holds rows the database would not take",
                f"load them: `llm-monitor import-spool {spool}`",
            )
        )
    return checks
