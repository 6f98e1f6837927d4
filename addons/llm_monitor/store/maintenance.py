"""Operations that rewrite usage rows after the fact: repricing with the prices now in the
table, and loading rows the proxy spooled while the database could not be written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError
from sqlite_utils import Database

from llm_monitor.errors import DomainError
from llm_monitor.money.costs import load_price_book, price_row
from llm_monitor.store import rollups
from llm_monitor.store.recorder import write_rows
from llm_monitor.usage import UsageRecord


@dataclass(frozen=True)
class Repriced:
    rows: int
    changed: int


def reprice(db: Database, since: str) -> Repriced:
    """Recompute cost_usd and priced of the rows from day `since` (YYYY-MM-DD) on, and
    rebuild the rollups of those days, in one transaction."""
    book = load_price_book(db)
    fields = set(UsageRecord.model_fields)
    changed = 0
    updates = []
    for row in db.query("select * from usage where ts >= ?", [since]):
        priced = price_row(UsageRecord.model_validate({k: row[k] for k in fields}), book)
        if (priced["cost_usd"], priced["priced"]) != (row["cost_usd"], row["priced"]):
            changed += 1
        updates.append((priced["cost_usd"], priced["priced"], row["id"]))
    with db.atomic():
        db.conn.executemany("update usage set cost_usd = ?, priced = ? where id = ?", updates)
        rollups.rebuild(db, since)
    return Repriced(len(updates), changed)


MAX_SPOOL_LINE = 1024 * 1024  # a spooled row is well under 100 KB


def import_spool(db: Database, file: str | Path) -> int:
    """Price and write every row of a spool file (JSONL of usage records), all or none;
    returns how many. A line that is not a usage record refuses the whole file."""
    book = load_price_book(db)
    rows = []
    with open(file, encoding="utf-8") as f:
        for number, line in enumerate(iter(lambda: f.readline(MAX_SPOOL_LINE + 1), ""), 1):
            if len(line) > MAX_SPOOL_LINE:
                raise DomainError(
                    f"{file}:{number}: a line longer than {MAX_SPOOL_LINE} characters"
                )
            if not line.strip():
                continue
            try:
                record = UsageRecord.model_validate_json(line)
            except ValidationError as e:
                raise DomainError(
                    f"{file}:{number}: not a usage row: {e.errors()[0]['msg']}"
                ) from None
            rows.append(price_row(record, book))
    write_rows(db, rows)
    return len(rows)
