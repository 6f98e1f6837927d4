"""Default prices and model matching from pydantic's `genai-prices` (pinned in pyproject).

The library is used for its data and its matching rules, never for its arithmetic: its
rates are copied into our `prices` table (origin `library`) by `llm-monitor init` and
`pricing sync`, and costs are computed by `money.costs` with our own rules. Nothing here
fetches anything: the library's optional auto-update (`UpdatePrices`) is never started,
so prices change only when someone upgrades the package and runs `pricing sync`.

Importing `genai_prices` takes about 0.25 s: callers reach this module from the recorder
thread or the command line, never from the proxy's event loop.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from importlib.metadata import version
from typing import Any

from llm_monitor.money.prices import PriceEntry

# Our provider names (a listener's name) -> the library's provider ids.
PROVIDERS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "google",
    "xai": "x-ai",
    "groq": "groq",
    "mistral": "mistral",
    "deepseek": "deepseek",
    "openrouter": "openrouter",
    "together": "together",
    "fireworks": "fireworks",
}
_OURS = {library: ours for ours, library in PROVIDERS.items()}

# The library's price keys we bill by, and our rate for each. Keys not here are units the
# proxy never counts (audio hours, characters, document pages, video): a model priced only
# in those has no entry; its rows are unpriced with `uncounted_unit:<keys>` (see
# `LibraryIndex.uncounted_units`), not `no_price`, since it has a price.
RATE_OF_KEY = {
    "input_mtok": "input",
    "cache_read_mtok": "cached_input",
    "cache_write_mtok": "cache_write",
    "cache_write_1h_mtok": "cache_write_1h",
    "output_mtok": "output",
    "output_reasoning_mtok": "reasoning",
    "input_audio_mtok": "input_audio",
    "output_audio_mtok": "output_audio",
    "input_image_mtok": "input_image",
    "output_image_mtok": "output_image",
    "web_searches_kcount": "web_search_per_1k",
    "code_executions_kcount": "code_execution_per_1k",
    "storage_searches_kcount": "file_search_per_1k",  # OpenAI's file_search tool calls
}
SINCE_EVER = dt.date(2000, 1, 1)


def library_version() -> str:
    return version("genai-prices")


def library_source() -> str:
    return f"genai-prices {library_version()}"


def _data() -> Any:
    from genai_prices import data  # 0.25 s: only when prices are built or matched

    return data


def _types() -> Any:
    from genai_prices import types

    return types


# From the library's data to price entries.


def _expand(model_price: Any) -> dict[int, dict[str, Decimal]]:
    """A ModelPrice as rates per long-context tier: {0: base rates, start: rates, ...}.

    A key's tier applies to the whole request above its start (a cliff), so at each start
    every key takes the price of its own last tier at or below that start, else its base.
    """
    tiered = _types().TieredPrices
    values = {
        RATE_OF_KEY[k]: v
        for k, v in vars(model_price).items()
        if k in RATE_OF_KEY and v is not None
    }
    starts = sorted({t.start for v in values.values() if isinstance(v, tiered) for t in v.tiers})
    by_tier: dict[int, dict[str, Decimal]] = {}
    for start in [0, *starts]:
        rates = {}
        for rate, value in values.items():
            if isinstance(value, tiered):
                price = value.base
                for tier in sorted(value.tiers, key=lambda t: t.start):
                    if start and tier.start <= start:
                        price = tier.price
                rates[rate] = price
            else:
                rates[rate] = value
        by_tier[start] = rates
    return by_tier


def _price_keys(model: Any) -> set[str]:
    """The price keys with a value anywhere in a library model's prices."""
    types = _types()
    prices = model.prices
    found = [prices] if isinstance(prices, types.ModelPrice) else [c.prices for c in prices]
    found += [variant.prices for variant in model.price_variants or []]
    return {key for price in found for key, value in vars(price).items() if value is not None}


def _entries_of(provider: str, model: Any, source: str, as_of: dt.date) -> Iterator[PriceEntry]:
    types = _types()
    conditional = (
        [types.ConditionalPrice(constraint=None, prices=model.prices)]
        if isinstance(model.prices, types.ModelPrice)
        else model.prices
    )
    common = {"provider": provider, "model": model.id, "origin": "library", "source": source}
    for item in conditional:
        if not any(v is not None for v in vars(item.prices).values()):
            # The library lists the model with no rate at all: free (OpenRouter's `:free`
            # models, free previews). Text in and out cost nothing; any other unit has no
            # rate, so a request that used one stays unpriced.
            item = types.ConditionalPrice(
                constraint=item.constraint,
                prices=types.ModelPrice(input_mtok=Decimal(0), output_mtok=Decimal(0)),
            )
        constraint = item.constraint
        since, window = SINCE_EVER, ""
        if isinstance(constraint, types.StartDateConstraint):
            since = constraint.start_date
        elif isinstance(constraint, types.TimeOfDateConstraint):
            window = f"{constraint.start_time:%H:%M}-{constraint.end_time:%H:%M}"
        for start, rates in _expand(item.prices).items():
            if rates:
                yield PriceEntry(
                    **common,
                    **rates,
                    above_input_tokens=start,
                    window=window,
                    effective_from=since,
                    as_of=as_of,
                )
    for variant in model.price_variants or []:
        constraint = variant.constraint
        if isinstance(constraint, types.TimeOfDateConstraint):
            continue  # none in the pinned data; a time-of-day variant is not modelled
        since = constraint.start_date if constraint is not None else SINCE_EVER
        name = ",".join(f"{k}={v}" for k, v in sorted(variant.when.items()))
        for start, rates in _expand(variant.prices).items():
            if rates:  # OpenAI's `service_tier=default` variant is an empty marker
                yield PriceEntry(
                    **common,
                    **rates,
                    above_input_tokens=start,
                    variant=name,
                    effective_from=since,
                    as_of=as_of,
                )


@functools.cache
def library_prices() -> tuple[PriceEntry, ...]:
    """Every price of the installed library for our providers, as `library` entries."""
    source = library_source()
    as_of = dt.date.today()
    providers = {p.id: p for p in _data().providers}
    return tuple(
        entry
        for ours, theirs in PROVIDERS.items()
        for model in providers[theirs].models
        for entry in _entries_of(ours, model, source, as_of)
    )


# Matching a model name to the library's model.

# `gpt-4o-2024-08-06`, `claude-sonnet-4-20250514`, `gpt-4-0613`, `grok-4-latest`.
SNAPSHOT = re.compile(
    r"^(?P<family>.+?)-(?:\d{4}-\d{2}-\d{2}|20\d{6}|(?:0[1-9]|1[0-2])(?:[0-2]\d|3[01])|latest)$"
)

_COMPACT_DATE = re.compile(r"-(20\d\d)(\d\d)(\d\d)$")
_FULL_DATE = re.compile(r"-(\d{4})-?(\d\d)-?(\d\d)$")


def made_up_date(model: str, today: dt.date) -> bool:
    """Whether `model` ends in a full date no snapshot can have: not a date of the
    calendar, or later than `today` (`gpt-4o-2099-01-01`)."""
    found = _FULL_DATE.search(model)
    if found is None:
        return False
    try:
        return dt.date(*map(int, found.groups())) > today
    except ValueError:
        return True


def family_of(model: str) -> str | None:
    """The model a dated snapshot (or `-latest` alias) belongs to, else None."""
    match = SNAPSHOT.match(model)
    return match.group("family") if match else None


def _equals_values(clause: Any) -> Iterator[str]:
    """The exact names a match clause accepts (its `equals` clauses; not prefixes or
    regular expressions, which name no particular model)."""
    if hasattr(clause, "equals"):
        yield clause.equals
    for child in getattr(clause, "or_", None) or []:
        yield from _equals_values(child)


@dataclass(frozen=True, slots=True)
class Match:
    provider: str  # ours
    model: str  # the library's model id


class LibraryIndex:
    """The library's matching rules, for our provider names: exact ids, aliases,
    `-latest` and snapshot names listed in the data, both date forms, `provider/model`."""

    def __init__(self) -> None:
        data = _data()
        self._all = data.providers
        self._providers = {p.id: p for p in data.providers}
        # Every name the data lists exactly, per provider: snapshot families are read from it.
        self._names: dict[str, list[str]] = {}
        for ours, theirs in PROVIDERS.items():
            names = []
            for model in self._providers[theirs].models:
                names.append(model.id)
                names.extend(_equals_values(model.match))
            self._names[ours] = names
        self._listed = {ours: {n.lower() for n in names} for ours, names in self._names.items()}
        # Models the library prices only in units the proxy does not count.
        self._uncounted: dict[tuple[str, str], str] = {}
        for ours, theirs in PROVIDERS.items():
            for model in self._providers[theirs].models:
                keys = _price_keys(model)
                if keys and not keys & RATE_OF_KEY.keys():
                    self._uncounted[ours, model.id] = ",".join(sorted(keys))

    def find(self, provider: str, model: str) -> Match | None:
        """The library model `model` names for our `provider`, or None."""
        found = self._model(provider, model)
        if found is None:
            return None
        library_provider = self._providers[PROVIDERS[provider]]
        return Match(self._owner(provider, library_provider, found), found.id)

    def context_window(self, provider: str, model: str) -> int | None:
        """The library's context window (tokens) of the model `model` names, if it has one."""
        found = self._model(provider, model)
        window = getattr(found, "context_window", None)
        return window if isinstance(window, int) and window > 0 else None

    def _model(self, provider: str, model: str) -> Any:
        theirs = PROVIDERS.get(provider)
        if theirs is None:
            return None
        library_provider = self._providers[theirs]
        for ref in self._refs(provider, model):
            found = library_provider.find_model(ref, all_providers=self._all)
            if found is not None:
                return found
        return None

    def uncounted_units(self, provider: str, model: str) -> str | None:
        """The library's units for `model` when it is priced only in units the proxy does
        not count (`audio_hours` for whisper-1, `input_mchars` for tts-1), else None."""
        match = self.find(provider, model)
        return None if match is None else self._uncounted.get((match.provider, match.model))

    def lists(self, provider: str, model: str) -> bool:
        """Whether the data names `model` itself (an id or an exact alias, the compact date
        form included), rather than catching it by a prefix or pattern rule."""
        listed = self._listed.get(provider, set())
        for ref in self._refs(provider, model):
            ref = ref.lower()
            if ref in listed or _COMPACT_DATE.sub(r"-\1-\2-\3", ref) in listed:
                return True
        return False

    def snapshot_names(self, provider: str, family: str) -> list[str]:
        """Names the data lists for dated snapshots of `family`."""
        return [
            n
            for n in self._names.get(provider, [])
            if family_of(n) is not None and family_of(n).lower() == family.lower()
        ]

    @staticmethod
    def _refs(provider: str, model: str) -> Iterator[str]:
        yield model
        if model.startswith("models/"):  # Gemini's resource names
            yield model.removeprefix("models/")
        prefix, slash, rest = model.partition("/")
        if slash and provider != "openrouter" and prefix.lower() in _PREFIXES.get(provider, ()):
            yield rest

    def _owner(self, provider: str, library_provider: Any, model: Any) -> str:
        """Our name for the provider whose list holds `model` (the library falls back from
        Google to Anthropic for Claude on Vertex, priced as Anthropic's)."""
        if any(m is model for m in library_provider.models):
            return provider
        for other in library_provider.fallback_model_providers or []:
            if any(m is model for m in self._providers[other].models):
                return _OURS.get(other, other)
        return provider


# `openai/gpt-4o` sent to OpenAI itself, as LiteLLM-style clients do.
_PREFIXES = {
    "openai": ("openai",),
    "anthropic": ("anthropic",),
    "gemini": ("google", "gemini"),
    "xai": ("x-ai", "xai"),
    "groq": ("groq",),
    "mistral": ("mistral", "mistralai"),
    "deepseek": ("deepseek",),
    "together": ("together", "together_ai"),
    "fireworks": ("fireworks", "fireworks_ai"),
}


@functools.cache
def library_index() -> LibraryIndex:
    return LibraryIndex()
