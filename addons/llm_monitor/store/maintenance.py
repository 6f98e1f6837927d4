"""Operations that rewrite usage rows after the fact: repricing with the prices now in the
table, and loading rows the proxy spooled while the database could not be written."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

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
    # Per provider and model: requests, and cost and unpriced requests before and after.
    by_model: list[dict[str, Any]] = field(default_factory=list)


_PRICING_COLUMNS = ("cost_usd", "priced", "cost_basis", "unpriced_reason")


def reprice(db: Database, since: str, *, dry_run: bool = False) -> Repriced:
    """Recompute the cost columns of the rows from day `since` (YYYY-MM-DD) on with the
    prices now in the table, and rebuild the rollups of those days, in one transaction.
    With `dry_run`, only say what would change."""
    book = load_price_book(db)
    fields = set(UsageRecord.model_fields)
    changed = 0
    updates = []
    models: dict[tuple[str, str], dict[str, Any]] = {}
    for row in db.query("select * from usage where ts >= ?", [since]):
        priced = price_row(UsageRecord.model_validate({k: row[k] for k in fields}), book)
        before = tuple(row[c] for c in _PRICING_COLUMNS)
        after = tuple(priced[c] for c in _PRICING_COLUMNS)
        if before != after:
            changed += 1
        updates.append((*after, row["id"]))
        key = (row["provider"], row["response_model"] or row["model"] or "")
        totals = models.setdefault(
            key,
            {
                "provider": key[0],
                "model": key[1],
                "requests": 0,
                "changed": 0,
                "cost_before": Decimal(0),
                "cost_after": Decimal(0),
                "unpriced_before": 0,
                "unpriced_after": 0,
            },
        )
        totals["requests"] += 1
        totals["changed"] += before != after
        totals["cost_before"] += Decimal(str(row["cost_usd"] or 0))
        totals["cost_after"] += Decimal(str(priced["cost_usd"] or 0))
        totals["unpriced_before"] += row["priced"] == 0
        totals["unpriced_after"] += priced["priced"] == 0
    by_model = sorted(models.values(), key=lambda m: (-m["cost_after"], m["provider"], m["model"]))
    for m in by_model:
        m["cost_before"], m["cost_after"] = float(m["cost_before"]), float(m["cost_after"])
    if not dry_run:
        with db.atomic():
            db.conn.executemany(
                "update usage set cost_usd = ?, priced = ?, cost_basis = ?, unpriced_reason = ? "
                "where id = ?",
                updates,
            )
            rollups.rebuild(db, since)
    return Repriced(len(updates), changed, by_model)


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
