"""Turning what a request used into USD with the prices in force, never guessing.

Every billable unit a response reports (each kind of token, web searches and grounded
prompts, file searches, Maps-grounded prompts, code executions) is priced by its own
rate. A model without a price, a unit without a rate, or a service tier without its own
prices gives no cost at all: the row is stored with `cost_usd` NULL, `priced` = 0 and
the reason in `unpriced_reason` (`no_price`, `missing_rate:<kind>`, `usage_unseen`,
`uncounted_unit:<units>`, `inconsistent_usage`). A kind of token without a rate never
takes another kind's rate, unlike the price library's own `calc_price`.

A priced row says how in `cost_basis`: the price entry used (its source, model and first
day), `fallback:<family> ...` when an unknown snapshot took its family's price, or
`provider_reported` when the provider stated the charge itself (OpenRouter).
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import operator
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlite_utils import Database

from llm_monitor.money.library import LibraryIndex, family_of, library_index, made_up_date
from llm_monitor.money.prices import CALL_RATES, PriceEntry, read_prices
from llm_monitor.usage import UsageRecord, UsageRow, billed_model, fields_of, has_usage

PER_TOKEN = Decimal(1_000_000)
PER_CALL = Decimal(1_000)
__all__ = ["PriceBook", "Unpriced", "breakdown", "family_of", "price_row"]

# The counts of a usage row that can cost money.
UNIT_FIELDS = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
    "input_audio_tokens",
    "output_audio_tokens",
    "input_image_tokens",
    "output_image_tokens",
    "web_search_requests",
    "code_executions",
    "file_searches",
    "maps_grounded_prompts",
    "web_search_preview_calls",
)


class Unpriced(Exception):
    """No cost can be given; `reason` says why, as stored in `unpriced_reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


MissingRate = Unpriced  # the name earlier callers used


@dataclass(frozen=True, slots=True)
class Line:
    """One term of a cost: `count` units of `kind` at `rate` USD per `per` units."""

    kind: str
    count: int
    rate: Decimal
    per: Decimal

    @property
    def amount(self) -> Decimal:
        return self.count * self.rate / self.per


_count_of = operator.itemgetter(1)


def _counts(rates: dict[str, Decimal], units: dict[str, int | None]) -> tuple[tuple[str, int], ...]:
    """Each kind of unit the request used, as counts that are parts of no other."""
    get = units.get
    cached = get("cached_input_tokens") or 0
    cache_write = get("cache_write_tokens") or 0
    cache_write_1h = get("cache_write_1h_tokens") or 0
    audio_in, image_in = get("input_audio_tokens") or 0, get("input_image_tokens") or 0
    audio_out, image_out = get("output_audio_tokens") or 0, get("output_image_tokens") or 0
    reasoning = get("reasoning_tokens") or 0
    output = get("output_tokens") or 0
    reasoning_apart = reasoning if "reasoning" in rates else 0
    counts = (
        ("input", (get("input_tokens") or 0) - cached - cache_write - audio_in - image_in),
        ("cached_input", cached),
        ("cache_write", cache_write - cache_write_1h),
        ("cache_write_1h", cache_write_1h),
        ("input_audio", audio_in),
        ("input_image", image_in),
        ("output", output - audio_out - image_out - reasoning_apart),
        ("reasoning", reasoning_apart),
        ("output_audio", audio_out),
        ("output_image", image_out),
        ("web_search_per_1k", get("web_search_requests") or 0),
        ("code_execution_per_1k", get("code_executions") or 0),
        ("file_search_per_1k", get("file_searches") or 0),
        ("maps_grounding_per_1k", get("maps_grounded_prompts") or 0),
        ("web_search_preview_per_1k", get("web_search_preview_calls") or 0),
    )
    if reasoning > output or min(map(_count_of, counts)) < 0:
        raise Unpriced("inconsistent_usage")  # a part larger than its whole
    return counts


def _rate(rates: dict[str, Decimal], kind: str) -> Decimal:
    rate = rates.get(kind)
    if rate is None:
        raise Unpriced(f"missing_rate:{kind.removesuffix('_per_1k')}")
    return rate


def breakdown(rates: dict[str, Decimal], **units: int | None) -> list[Line]:
    """The cost's terms: each kind of unit the request used, at its own rate.

    Counts as in `usage`: input_tokens includes cached, cache-write, audio and image
    tokens; cache_write_tokens includes the one-hour writes; output_tokens includes
    reasoning, audio and image tokens. Reasoning is output text: billed at the output rate
    unless the price gives it a rate of its own.
    """
    return [
        Line(kind, count, _rate(rates, kind), PER_CALL if kind in CALL_RATES else PER_TOKEN)
        for kind, count in _counts(rates, units)
        if count
    ]


def total(rates: dict[str, Decimal], units: dict[str, int | None]) -> Decimal:
    """The sum of `breakdown`'s terms, computed without building them (the recorder's path,
    once a row: per-call terms are divided only when there are some)."""
    tokens: Decimal | int = 0
    calls: Decimal | int = 0
    for kind, count in _counts(rates, units):
        if count:
            if kind in CALL_RATES:
                calls += count * _rate(rates, kind)
            else:
                tokens += count * _rate(rates, kind)
    cost = tokens / PER_TOKEN
    return cost + calls / PER_CALL if calls else cost


def cost_usd(price: PriceEntry, **units: int | None) -> Decimal:
    """Cost of one request at one price's rates (see `breakdown`)."""
    return sum((line.amount for line in breakdown(price.rates(), **units)), Decimal(0))


def tier_variant(service_tier: str | None) -> str:
    """The price variant of a response's service tier: '' for the standard price."""
    if not service_tier or service_tier in ("default", "auto", "standard", "standard_only"):
        return ""
    if service_tier == "batch":
        return "processing=batch"
    return f"service_tier={service_tier}"


@dataclass(frozen=True)
class Quote:
    """The rates for one request, and which entries they came from."""

    entry: PriceEntry  # the standard price
    variant: PriceEntry | None  # the service tier's own rates, over the standard ones
    rates: dict[str, Decimal]
    fallback: str | None = None  # the family an unknown snapshot was priced as

    @functools.cached_property
    def basis(self) -> str:
        text = entry_label(self.entry)
        if self.variant is not None:
            text += f" + {self.variant.variant}@{self.variant.effective_from}"
        return f"fallback:{self.fallback} {text}" if self.fallback else text


def entry_label(entry: PriceEntry) -> str:
    """`genai-prices 0.2.3:openai/gpt-4o@2000-01-01`: what `cost_basis` names."""
    origin = entry.source if entry.origin == "library" else "local"
    text = f"{origin}:{entry.provider}/{entry.model}@{entry.effective_from}"
    if entry.above_input_tokens:
        text += f">{entry.above_input_tokens}"
    if entry.window:
        text += f" {entry.window}Z"
    return text


Group = tuple[str, int, str]  # variant, above_input_tokens, window


class _History:
    """One group's entries by `effective_from`."""

    __slots__ = ("dates", "entries")

    def __init__(self) -> None:
        self.entries: list[PriceEntry] = []
        self.dates: list[dt.date] = []

    def in_force(self, day: dt.date) -> PriceEntry | None:
        i = bisect.bisect_right(self.dates, day)
        if not i:
            return None
        entry = self.entries[i - 1]
        if entry.effective_until is not None and day >= entry.effective_until:
            return None
        return entry


def _covers(window: str, clock: dt.time) -> bool:
    start, end = (dt.time.fromisoformat(t) for t in window.split("-"))
    return start <= clock < end if start <= end else (clock >= start or clock < end)


class PriceBook:
    """Prices by provider and model: the `prices` table's entries, each model's local
    ones winning over the library's, found by the library's matching rules.

    Built once (the recorder builds it at start and when the table changes) and then only
    read; matches are cached, so pricing a row costs microseconds.
    """

    def __init__(self, entries: Iterable[PriceEntry], library: LibraryIndex | None = None) -> None:
        self.library = library
        self._models: dict[tuple[str, str], dict[str, dict[Group, _History]]] = {}
        count = 0
        for entry in sorted(entries, key=lambda e: e.effective_from):
            groups = self._models.setdefault((entry.provider, entry.model), {})
            history = groups.setdefault(entry.origin, {}).setdefault(
                (entry.variant, entry.above_input_tokens, entry.window), _History()
            )
            history.entries.append(entry)
            history.dates.append(entry.effective_from)
            count += 1
        self._count = count
        # Models whose price depends on the day alone: no long-context tier, no time window.
        self._plain = {
            key: all(tier == 0 and not window for g in origins.values() for _, tier, window in g)
            for key, origins in self._models.items()
        }
        self._resolved: dict[tuple[str, str], tuple[tuple[str, str] | None, str | None]] = {}
        self._reasons: dict[tuple[str, str], str] = {}  # see `no_price_reason`
        # Quotes of models without tiers or time windows depend only on the day: cached.
        self._quotes: dict[tuple[str, str, str, str], Quote] = {}

    def __len__(self) -> int:
        return self._count

    def models(self) -> list[tuple[str, str]]:
        return list(self._models)

    def in_force(self, day: dt.date) -> list[PriceEntry]:
        """Every price in force on `day`: per model, its local prices if one is in force,
        else the library's; each tier, variant and time window."""
        found = []
        for key in sorted(self._models):
            for history in self._groups_in_force(key, day).values():
                entry = history.in_force(day)
                if entry is not None:
                    found.append(entry)
        return found

    # Which model's prices apply.

    def resolve(self, provider: str, model: str) -> tuple[tuple[str, str] | None, str | None]:
        """(the priced model's key, the family if it is a fallback), cached."""
        key = (provider, model)
        found = self._resolved.get(key)
        if found is None:
            if len(self._resolved) > 50_000:  # made-up names must not grow it forever
                self._resolved.clear()
            found = self._resolved[key] = self._resolve(provider, model)
        return found

    def _resolve(self, provider: str, model: str) -> tuple[tuple[str, str] | None, str | None]:
        direct = self._direct(provider, model)
        family = family_of(model)
        if direct is not None and not self._unknown_snapshot(provider, model, family, direct):
            return direct, None
        if family is not None:
            priced_as = self._direct(provider, family)
            if priced_as is not None and self._snapshots_agree(provider, family, priced_as):
                return priced_as, family
        return None, None

    def _direct(self, provider: str, model: str) -> tuple[str, str] | None:
        """The model itself, or what the library's rules say it is (an alias, a listed
        snapshot, `provider/model`), when the table has prices for it."""
        if (provider, model) in self._models:
            return provider, model
        if self.library is not None:
            match = self.library.find(provider, model)
            if match is not None and (match.provider, match.model) in self._models:
                return match.provider, match.model
        return None

    def _unknown_snapshot(
        self, provider: str, model: str, family: str | None, direct: tuple[str, str]
    ) -> bool:
        """A name dated later than today (or on no day of the calendar) that no table
        lists, given its family's prices only by a prefix rule of the library
        (`claude-sonnet-4-5-20991231`): priced as a fallback, if at all. A past date is
        left to the library's rule (`claude-sonnet-4-20250514` is claude-sonnet-4)."""
        if family is None or (provider, model) in self._models:
            return False
        if not made_up_date(model, dt.datetime.now(dt.UTC).date()):
            return False
        if self.library is not None and self.library.lists(provider, model):
            return False
        return self._direct(provider, family) == direct

    def _snapshots_agree(self, provider: str, family: str, priced_as: tuple[str, str]) -> bool:
        """Every known snapshot of the family has the family's prices: only then may an
        unknown one be priced as the family (gpt-4o-2024-05-13 costs more than gpt-4o)."""
        names = [m for p, m in self._models if p == provider and family_of(m) == family]
        if self.library is not None:
            names += self.library.snapshot_names(provider, family)
        family_rates = self._signature(priced_as)
        for name in names:
            key = self._direct(provider, name)
            if key is not None and key != priced_as and self._signature(key) != family_rates:
                return False
        return True

    def _signature(self, key: tuple[str, str]) -> frozenset[Any]:
        return frozenset(
            (group, tuple(sorted(entry.rates().items())))
            for groups in self._models[key].values()
            for group, history in groups.items()
            for entry in history.entries
        )

    # The price in force.

    def quote(
        self,
        provider: str,
        model: str,
        when: dt.datetime,
        input_tokens: int | None = None,
        variant: str = "",
    ) -> Quote:
        """The rates for a request to `model` at `when` (UTC); raises Unpriced."""
        key, fallback = self.resolve(provider, model)
        if key is None:
            raise Unpriced(self.no_price_reason(provider, model))
        day = when.date()
        groups = self._groups_in_force(key, day)
        standard = self._pick(groups, "", day, when.time(), input_tokens)
        if standard is None:
            raise Unpriced("no_price")
        if not variant:
            return Quote(standard, None, standard.rates(), fallback)
        own = self._pick(groups, variant, day, None, input_tokens)
        if own is None:
            raise Unpriced(f"missing_rate:{variant}")
        return Quote(standard, own, {**standard.rates(), **own.rates()}, fallback)

    def no_price_reason(self, provider: str, model: str) -> str:
        """Why `model` has no price here: `uncounted_unit:<units>` when the library prices
        it only in units the proxy does not count (audio hours, characters, pages), else
        `no_price`. Cached as `resolve` is: every row of such a model, and every row whose
        usage went unseen, asks (a library match is about 80 µs)."""
        key = (provider, model)
        reason = self._reasons.get(key)
        if reason is None:
            units = self.library.uncounted_units(provider, model) if self.library else None
            reason = f"uncounted_unit:{units}" if units else "no_price"
            if len(self._reasons) > 50_000:  # made-up names must not grow it forever
                self._reasons.clear()
            self._reasons[key] = reason
        return reason

    def quote_at(
        self, provider: str, model: str, ts: str, input_tokens: int | None, variant: str = ""
    ) -> Quote:
        """`quote` for a row's `ts` (UTC ISO-8601), cached per day where that is exact."""
        key = (provider, model, ts[:10], variant)
        quote = self._quotes.get(key)
        if quote is not None:
            return quote
        quote = self.quote(provider, model, when_of(ts), input_tokens, variant)
        resolved = self.resolve(provider, model)[0]
        if resolved is not None and self._plain[resolved]:
            if len(self._quotes) > 50_000:
                self._quotes.clear()
            self._quotes[key] = quote
        return quote

    def lookup(
        self, provider: str, model: str, on: dt.date, input_tokens: int | None = None
    ) -> PriceEntry | None:
        """The standard price in force on `on` (at noon UTC) for the model and prompt length."""
        try:
            when = dt.datetime.combine(on, dt.time(12))
            return self.quote(provider, model, when, input_tokens).entry
        except Unpriced:
            return None

    def _groups_in_force(self, key: tuple[str, str], day: dt.date) -> dict[Group, _History]:
        """The model's local prices when one is in force that day, else the library's."""
        origins = self._models[key]
        local = origins.get("local")
        if local and any(h.in_force(day) for h in local.values()):
            return local
        return origins.get("library") or {}

    @staticmethod
    def _pick(
        groups: dict[Group, _History],
        variant: str,
        day: dt.date,
        clock: dt.time | None,
        input_tokens: int | None,
    ) -> PriceEntry | None:
        window = ""
        if clock is not None:
            for (v, tier, w), history in groups.items():
                if (
                    v == variant
                    and w
                    and tier == 0
                    and _covers(w, clock)
                    and history.in_force(day) is not None
                ):
                    window = w
                    break
        in_force = {}
        for (v, tier, w), history in groups.items():
            if v == variant and w == window and (entry := history.in_force(day)) is not None:
                in_force[tier] = entry
        if 0 not in in_force:
            return None
        return in_force[max(t for t in in_force if t == 0 or t < (input_tokens or 0))]


def load_price_book(db: Database) -> PriceBook:
    """The table's prices with the library's matching rules (imported on first use)."""
    return PriceBook(read_prices(db), library_index())


def units_of(record: UsageRecord | UsageRow) -> dict[str, int | None]:
    fields = fields_of(record)
    return {name: fields.get(name) for name in UNIT_FIELDS}


def when_of(ts: str) -> dt.datetime:
    return dt.datetime.fromisoformat(ts.removesuffix("Z"))


def price_row(record: UsageRecord | UsageRow, book: PriceBook) -> UsageRow:
    """The record as a `usage` row with its cost, `priced`, `cost_basis` and
    `unpriced_reason` filled in (a new dict: the record is left as it was).

    priced = 1: cost known. priced = 0: the request was billable but its cost is unknown
    (the reason says why). priced = NULL: nothing to bill (an error status, no answer at
    all, an endpoint without a model, a free call).
    """
    fields = fields_of(record)
    row = {**fields, "cost_usd": None, "priced": None, "cost_basis": None}
    row["unpriced_reason"] = None
    model = billed_model(fields)
    if has_usage(fields):
        if fields["reported_cost_usd"] is not None:
            row.update(
                cost_usd=fields["reported_cost_usd"], priced=1, cost_basis="provider_reported"
            )
            return row
        try:
            if not model:
                raise Unpriced("no_price")
            if fields.get("uncounted_units"):
                raise Unpriced(f"uncounted_unit:{fields['uncounted_units']}")
            quote = book.quote_at(
                fields["provider"],
                model,
                fields["ts"],
                fields["input_tokens"],
                tier_variant(fields["service_tier"]),
            )
            row["cost_usd"] = float(total(quote.rates, row))
            row["priced"], row["cost_basis"] = 1, quote.basis
        except Unpriced as e:
            row["priced"], row["unpriced_reason"] = 0, e.reason
    elif fields["billable"] and model and _may_have_been_billed(fields):
        # A model billed by units the proxy does not count (tts-1's characters, whisper-1's
        # seconds) is unpriced for that reason, not because its usage went unseen.
        reason = book.no_price_reason(fields["provider"], model)
        if fields.get("uncounted_units") and not reason.startswith("uncounted_unit:"):
            reason = f"uncounted_unit:{fields['uncounted_units']}"
        row["priced"] = 0
        row["unpriced_reason"] = reason if reason != "no_price" else "usage_unseen"
    return row


def _may_have_been_billed(row: UsageRow) -> bool:
    """A request the provider may have worked on: not refused with an error status, and
    not one that never reached it (the upstream could not be reached at all)."""
    if row["status"] is not None:
        return row["status"] < 300
    return row["outcome"] != "upstream_error"
