"""Turning token counts into USD with the price in force, never guessing.

A model without a price, or a kind of token the price has no rate for, gives no cost at
all (None), which the recorder stores as NULL with `priced` = 0.
"""

from __future__ import annotations

import bisect
import datetime as dt
import re
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from sqlite_utils import Database

from llm_monitor.money.prices import PriceEntry, read_prices
from llm_monitor.usage import UsageRecord

PER_TOKEN = Decimal(1_000_000)

# `gpt-4o-2024-08-06` and `gpt-4-0613` are snapshots of `gpt-4o` and `gpt-4`.
_SNAPSHOT_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4}|\d{8})$")


def family_of(model: str) -> str | None:
    """The model a dated snapshot belongs to, or None if it is not a snapshot."""
    stripped = _SNAPSHOT_SUFFIX.sub("", model)
    return stripped if stripped != model else None


class PriceBook:
    """Prices by provider and model, each a history ordered by `effective_from`."""

    def __init__(self, entries: Iterable[PriceEntry]) -> None:
        self._history: dict[tuple[str, str], list[PriceEntry]] = {}
        for entry in entries:
            self._history.setdefault((entry.provider, entry.model), []).append(entry)
        for history in self._history.values():
            history.sort(key=lambda e: e.effective_from)

    def __len__(self) -> int:
        return sum(len(h) for h in self._history.values())

    def lookup(
        self, provider: str, model: str, on: dt.date, input_tokens: int | None = None
    ) -> PriceEntry | None:
        """The price in force on `on` for the model (else its family) and prompt length."""
        for name in (model, family_of(model)):
            if name is None:
                continue
            history = self._history.get((provider, name))
            if not history:
                continue
            # Each tier has its own history: the latest entry of each in force on `on`.
            in_force: dict[int, PriceEntry] = {}
            for entry in history[: bisect.bisect_right([e.effective_from for e in history], on)]:
                in_force[entry.above_input_tokens] = entry
            if 0 not in in_force:
                continue
            tier = max(t for t in in_force if t == 0 or t < (input_tokens or 0))
            return in_force[tier]
        return None


class MissingRate(Exception):
    """The price has no rate for a kind of token this request used."""


def cost_usd(
    price: PriceEntry,
    *,
    input_tokens: int | None,
    cached_input_tokens: int | None = None,
    cache_write_tokens: int | None = None,
    cache_write_1h_tokens: int | None = None,
    output_tokens: int | None = None,
    reasoning_tokens: int | None = None,
) -> Decimal:
    """Cost of one request; each kind of token at its own rate.

    input_tokens includes cached and cache-write tokens; cache_write_tokens includes the
    one-hour writes; output_tokens includes reasoning.
    """
    cached = cached_input_tokens or 0
    cache_write_1h = cache_write_1h_tokens or 0
    cache_write = (cache_write_tokens or 0) - cache_write_1h
    output = output_tokens or 0
    reasoning = reasoning_tokens or 0
    uncached = (input_tokens or 0) - cached - (cache_write_tokens or 0)
    if uncached < 0 or output < reasoning or cache_write < 0:
        raise MissingRate("token figures are inconsistent (a part exceeds its whole)")
    if cached and price.cached_input is None:
        raise MissingRate(f"no cached-input rate for {price.model}")
    if cache_write and price.cache_write is None:
        raise MissingRate(f"no cache-write rate for {price.model}")
    if cache_write_1h and price.cache_write_1h is None:
        raise MissingRate(f"no one-hour cache-write rate for {price.model}")
    total = uncached * price.input
    total += cached * (price.cached_input or 0)
    total += cache_write * (price.cache_write or 0)
    total += cache_write_1h * (price.cache_write_1h or 0)
    if price.reasoning is None:
        total += output * price.output
    else:
        total += (output - reasoning) * price.output + reasoning * price.reasoning
    return total / PER_TOKEN


def priced_cost(price: PriceEntry | None, **tokens: int | None) -> tuple[float | None, int]:
    """(cost_usd, priced) of a request with usage, tokens as for `cost_usd`: priced 0 and
    no cost when there is no price, or no rate for one of its kinds of token."""
    if price is None:
        return None, 0
    try:
        return float(cost_usd(price, **tokens)), 1
    except MissingRate:
        return None, 0


def load_price_book(db: Database) -> PriceBook:
    return PriceBook(read_prices(db))


def price_row(record: UsageRecord, book: PriceBook) -> dict[str, Any]:
    """The record as a `usage` row with `cost_usd` and `priced` filled in.

    priced = 1: cost known. priced = 0: the request was billable but its cost is unknown
    (no price for the model, no rate for a kind of token, or a 2xx answer whose usage was
    never seen). priced = NULL: nothing to bill (an error status, no answer at all, an
    endpoint without a model, a free call).
    """
    row = record.model_dump()
    row["cost_usd"] = None
    row["priced"] = None
    model = record.billed_model
    if record.has_usage:
        price = (
            book.lookup(record.provider, model, _day(record.ts), record.input_tokens)
            if model
            else None
        )
        row["cost_usd"], row["priced"] = priced_cost(
            price,
            input_tokens=record.input_tokens,
            cached_input_tokens=record.cached_input_tokens,
            cache_write_tokens=record.cache_write_tokens,
            cache_write_1h_tokens=record.cache_write_1h_tokens,
            output_tokens=record.output_tokens,
            reasoning_tokens=record.reasoning_tokens,
        )
    elif record.billable and model and _may_have_been_billed(record):
        row["priced"] = 0
    return row


def _may_have_been_billed(record: UsageRecord) -> bool:
    """A request the provider may have worked on: not refused with an error status, and
    not one that never reached it (the upstream could not be reached at all)."""
    if record.status is not None:
        return record.status < 300
    return record.outcome != "upstream_error"


def _day(ts: str) -> dt.date:
    return dt.date.fromisoformat(ts[:10])
