"""Loading the library's prices into the `prices` table, and keeping them current.

`install_defaults` (run by `llm-monitor init`) adds the shipped local overrides and every
library price the table does not have yet; it never changes a rate already there.
`plan_sync` compares the installed library with the table: models the table has never
seen, prices dated after the table's latest, and rates in force today that differ.
`apply_sync` writes them as new effective-dated entries; history is never deleted, so
past rows keep their cost until someone reprices them.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

from sqlite_utils import Database

from llm_monitor.money.library import library_prices, library_source
from llm_monitor.money.prices import (
    PriceEntry,
    insert_missing_prices,
    read_prices,
    shipped_prices,
    upsert_prices,
)

FLAG = Decimal(20)  # percent


@dataclass(frozen=True)
class Installed:
    library: int  # library prices added
    overrides: int  # shipped local overrides loaded
    source: str


def install_defaults(db: Database) -> Installed:
    """The shipped overrides, and the library's prices the table lacks."""
    overrides = shipped_prices()
    upsert_prices(db, overrides)
    added = insert_missing_prices(db, library_prices())
    return Installed(added, len(overrides), library_source())


@dataclass(frozen=True)
class RateChange:
    """A rate in force today that the library states differently."""

    old: PriceEntry
    new: PriceEntry  # as it will be written: effective today
    changes: dict[str, tuple[Decimal | None, Decimal | None]]

    @property
    def flagged(self) -> bool:
        """A change above 20%, or a rate added or removed."""
        return any(
            old is None or new is None or old == 0 or abs(new - old) * 100 > FLAG * old
            for old, new in self.changes.values()
        )

    def describe(self) -> str:
        parts = []
        for rate, (old, new) in self.changes.items():
            if old is None or new is None or old == 0:
                parts.append(f"{rate} {old} -> {new}")
            else:
                parts.append(f"{rate} {old} -> {new} ({(new - old) * 100 / old:+.1f}%)")
        return ", ".join(parts)


@dataclass
class SyncPlan:
    source: str
    today: dt.date
    new_models: list[tuple[str, str]] = field(default_factory=list)
    added: list[PriceEntry] = field(default_factory=list)  # new models' and new dated prices
    changed: list[RateChange] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed)


def _histories(entries: list[PriceEntry]) -> dict[tuple, list[PriceEntry]]:
    groups: dict[tuple, list[PriceEntry]] = defaultdict(list)
    for entry in sorted(entries, key=lambda e: e.effective_from):
        groups[entry.group].append(entry)
    return groups


def _in_force(history: list[PriceEntry], day: dt.date) -> PriceEntry | None:
    found = None
    for entry in history:
        if entry.effective_from <= day:
            found = entry
    if found is not None and found.effective_until is not None and day >= found.effective_until:
        return None
    return found


def plan_sync(db: Database, today: dt.date | None = None) -> SyncPlan:
    """What the installed library would add to or change in the table."""
    today = today or dt.datetime.now(dt.UTC).date()
    source = library_source()
    plan = SyncPlan(source, today)
    table = _histories([e for e in read_prices(db) if e.origin == "library"])
    known_models = {(g[0], g[1]) for g in table}
    new_models = set()
    for group, history in _histories(list(library_prices())).items():
        ours = table.get(group)
        if ours is None:
            plan.added.extend(history)
            if (group[0], group[1]) not in known_models:
                new_models.add((group[0], group[1]))
            continue
        latest = ours[-1].effective_from
        plan.added.extend(e for e in history if e.effective_from > latest)
        new, old = _in_force(history, today), _in_force(ours, today)
        if new is None or (old is not None and old.rates() == new.rates()):
            continue
        old_rates = old.rates() if old is not None else {}
        new_rates = new.rates()
        changes = {
            r: (old_rates.get(r), new_rates.get(r))
            for r in sorted(set(old_rates) | set(new_rates))
            if old_rates.get(r) != new_rates.get(r)
        }
        written = new.model_copy(
            update={"effective_from": max(today, new.effective_from), "as_of": today}
        )
        if old is None:  # the table's latest entry has ended: nothing to compare
            plan.added.append(written)
        else:
            plan.changed.append(RateChange(old, written, changes))
    plan.new_models = sorted(new_models)
    return plan


def apply_sync(db: Database, plan: SyncPlan) -> int:
    """Write the plan's entries; returns how many. Earlier entries stay as they are."""
    entries = plan.added + [change.new for change in plan.changed]
    return upsert_prices(db, entries)


# A library whose newest price change is older than this has likely missed some.
STALE_AFTER = dt.timedelta(days=180)


@dataclass(frozen=True)
class Freshness:
    source: str  # the installed library
    pending: int  # its prices the table lacks or states differently (see `plan_sync`)
    newest_change: dt.date  # the latest day from which any of its prices applies

    def stale(self, today: dt.date) -> bool:
        return self.newest_change < today - STALE_AFTER


def freshness(db: Database, today: dt.date | None = None) -> Freshness:
    """How current the table is against the installed library, and the library itself
    (for `doctor`)."""
    plan = plan_sync(db, today)
    newest = max(entry.effective_from for entry in library_prices())
    return Freshness(plan.source, len(plan.added) + len(plan.changed), newest)
